"""The enrich and rank stages of the ``Recommender``: ranker features, scores, explanations.

A mixin (``RankStage``) over the Recommender's state (``self.art``, ``self.catalog``,
``self.state``, ``self.live`` and its ``_live_binding``, ``self.cfg``, ``self.ranker_rt``,
``self.batcher``, ``self.prior_ctr``, ``self.dwell_prior``), as ``pipeline.candidates``
is for the retrieve stage. Per request: one engagement read split per category and per
item (``EngagementState.engagement_by_category``), one live-store read through its row
cache, one ranker feature block (``ranking.features.ranking_features``), one ranker call.
"""

from __future__ import annotations

import numpy as np

from feedrank.features.online import UserContext
from feedrank.ranking.features import FEATURE_NAMES, ranking_features


class RankStage:
    """Mixin: the enrich and rank stages (module docstring)."""

    def _explain(self, rows: list[int], dense: np.ndarray, cand: np.ndarray, variant: str, now: float,
                 scores: np.ndarray, top: int = 4) -> dict[int, tuple[tuple[str, float], ...]]:
        """Per kept candidate, the features that moved its score most: contribution of
        feature f = score - score with f set to its training mean (one ablation each)."""
        if not rows:
            return {}
        model = self.ranker_rt.variants["full"]
        baseline = model.mean.detach().numpy() if hasattr(model, "mean") else dense.mean(axis=0)
        x = dense[rows]
        n, f = x.shape
        ablated = np.repeat(x[None, :, :], f, axis=0)          # (F, n, F)
        ablated[np.arange(f), :, np.arange(f)] = baseline[:f][:, None]
        idx = cand[rows]
        flat = self.ranker_rt.score(variant, ablated.reshape(f * n, f), np.tile(self.catalog.cat_idx[idx], f),
                                    np.tile(self.catalog.age_seconds(idx, now), f), self.cfg.ranking).reshape(f, n)
        contrib = scores[rows][None, :] - flat                  # (F, n)
        names = FEATURE_NAMES[:f]
        out = {}
        for col, j in enumerate(rows):
            order = np.argsort(-np.abs(contrib[:, col]))[:top]
            out[j] = tuple((names[i], round(float(contrib[i, col]), 6)) for i in order)
        return out

    def _score(self, variant: str, dense: np.ndarray, category: np.ndarray, age_s: np.ndarray) -> np.ndarray:
        """Ranker scores (N,), through the micro-batcher when it is on."""
        if self.batcher is None:
            return self.ranker_rt.score(variant, dense, category, age_s, self.cfg.ranking)
        return self.batcher.submit((variant, dense, category, age_s))

    def _score_many(self, calls: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """One ranker call per variant for a batch of requests; results split back per call."""
        out: list[np.ndarray | None] = [None] * len(calls)
        for variant in {c[0] for c in calls}:
            idx = [i for i, c in enumerate(calls) if c[0] == variant]
            sizes = [len(calls[i][1]) for i in idx]
            scores = self.ranker_rt.score(variant, np.concatenate([calls[i][1] for i in idx]),
                                          np.concatenate([calls[i][2] for i in idx]),
                                          np.concatenate([calls[i][3] for i in idx]), self.cfg.ranking)
            for i, part in zip(idx, np.split(scores, np.cumsum(sizes)[:-1])):
                out[i] = part
        return out  # type: ignore[return-value]

    def _enrich(self, cand: np.ndarray, ctx: UserContext, now: float, user_vec: np.ndarray, aff: np.ndarray,
                user_id: str = "", live_status: list[str] | None = None, cats: np.ndarray | None = None,
                ages: np.ndarray | None = None) -> np.ndarray:
        """(n, N_FEATURES) float32 ranker features of the candidates for this user at ``now``.

        With live features attached, the item counters are the larger of the in-process
        cumulative counts and the store's validated longest-window counts (both are lower
        bounds of the true count; the store's includes what other replicas saw). One
        batched store read for all candidates; on a slow or dead store the in-process
        counts stand and ``live_status`` gets "default". ``cats`` / ``ages``: the candidates'
        category codes and ages at ``now`` when the caller has them (else gathered here)."""
        cats = self.catalog.cat_idx[cand] if cats is None else cats
        ages = self.catalog.age_seconds(cand, now) if ages is None else ages
        eng = None if self.art.engagement is None else self.art.engagement.engagement_by_category(user_id, cand, now)
        sim = self.art.item_vectors[cand] @ user_vec
        imps, clicks = self.state.item_impressions[cand], self.state.item_clicks[cand]
        if self.live is not None:  # max(in-process, store) per candidate, through the per-row cache
            li = self.live.read_rows(self._live_binding, cand, now, imps, clicks)
            imps, clicks = li.impressions, li.clicks
            if live_status is not None:
                live_status.append(li.status)
        return ranking_features(
            tower_sim=sim,
            category_affinity=aff[cats],
            item_impressions=imps,
            item_clicks=clicks,
            age_s=ages,
            user_clicks=float(ctx.n_clicks),  # one user, one time: scalars (broadcast once)
            ts=float(now),
            prior_ctr=self.prior_ctr,
            prior_weight=self.cfg.ranking.ctr_prior,
            engagement=eng,
            dwell_prior=self.dwell_prior,
        )[:, : getattr(self.art.ranker, "n_features", None)]  # a bundle trained before later features: its own
