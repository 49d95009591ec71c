"""The retrieve stage of the ``Recommender``: user vector, ANN, the other sources, merge.

A mixin (``CandidateStage``) over the Recommender's state: ``self.catalog``, ``self.art``,
``self.cfg``, ``self.state``, ``self.live_catalog`` (``pipeline.live_catalog``) and the
caches it sets up in ``_init_candidates``. Per request nothing here is O(catalogue):

- fresh, followed and the age prior's recent pool walk ``LiveCatalog``'s time-sorted
  indexes (per category, creator, subcategory, and over all rows) and stop after k live
  rows;
- liveness (expiry, replaced rows, age limit) is checked on the candidates only;
- the ANN is restricted to live rows by a bitmap selector built from the live set, which
  is recomputed (O(N)) at most every ``CACHE_S`` of request clock and only when some row
  can stop being live (an age limit, an expiry or an update); its results are then
  re-checked against the exact liveness at ``now``;
- popular and trending lists are recomputed (O(N)) at most every ``CACHE_S``; trending is
  re-checked for liveness at ``now`` on each request (popular is the last resort: it
  keeps items that are no longer live, after the live ones); the live set and the popular
  list refresh on one liveness pass over the catalogue;
- the age prior's pool (the newest live rows, at most ``PRIOR_POOL_MAX``) is walked per
  request, but its vectors and publish times are gathered again only when its rows change
  (``retrieval.served.RescorePool``, the same rescoring ``feedrank eval`` scores).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from feedrank.features.online import UserContext
from feedrank.retrieval.encode import user_vectors
from feedrank.retrieval.prior import AgePrior
from feedrank.retrieval.served import PRIOR_POOL_MAX, RescorePool, popular_pool_size
from feedrank.retrieval.sources import (SourceResult, decayed_counts, followed_keys, gather_sources, merge_sources,
                                         popular_items, trending_items)

log = logging.getLogger(__name__)

CACHE_S = 30.0  # request-clock seconds a cached live set / popular / trending list stays valid


class CandidateStage:
    """Mixin: the retrieve stage (module docstring). Needs ``_init_candidates`` called once."""

    def _init_candidates(self) -> None:
        self._popular: np.ndarray = np.zeros(0, dtype=np.int64)
        self._popular_at = -np.inf
        self._popular_lock = threading.Lock()
        self._source_cache: dict[str, tuple] = {}  # trending list, prior, follow-ignore codes
        self._source_pool = None                   # thread pool for the sources (pipeline.source_workers > 0)
        self._live: np.ndarray | None = None
        self._live_at = -np.inf

    def _reset_caches(self) -> None:
        """Forget the cached live set and popular list (catalogue or settings changed)."""
        with self._popular_lock:
            self._live, self._live_at = None, -np.inf
            self._popular, self._popular_at = np.zeros(0, dtype=np.int64), -np.inf
            self._source_cache.pop("live-mask", None)

    def _catalogue_live_mask(self, now: float) -> np.ndarray:
        """(N,) bool: every row's liveness at ``now``, O(N). The live set and the popular list
        refresh on the same request (same ``now``): they share one computation. Call under
        ``_popular_lock``."""
        n = len(self.catalog)
        hit = self._source_cache.get("live-mask")
        if hit is not None and hit[0] == now and len(hit[1]) == n:
            return hit[1]
        mask = self.live_catalog.mask(np.arange(n), now)
        self._source_cache["live-mask"] = (now, mask)
        return mask

    def _user_vectors(self, hist: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray]:
        """((B, D) user vectors, (B, C) affinities) for histories (B, L): numpy when exported."""
        if self._user_tower is not None:
            return self._user_tower(hist, np.array([now]), self.catalog.cat_idx, self.art.item_vectors)
        import torch

        with torch.inference_mode():  # per call: grad mode is thread-local and servers use pools
            u, aff = user_vectors(self.art.two_tower, self.catalog, hist, np.array([now]), self.art.item_vectors)
        return u.numpy(), aff

    def _newest(self, index: str | None, keys, now: float, max_age_s: float, k: int,
                queries: list | None = None) -> np.ndarray:
        """``LiveCatalog.newest`` (or ``newest_of`` with ``queries``) limited to the rows of
        this object's catalogue: a settings view (``with_settings``) shares the live catalogue
        with its base, which may already hold rows added after the view was made."""
        lc = self.live_catalog
        got = lc.newest_of(queries, now, max_age_s, k) if queries is not None else lc.newest(index, keys, now, max_age_s, k)
        n = len(self.catalog)
        return got if not len(got) or int(got.max()) < n else got[got < n]

    def _only_live(self, rows: np.ndarray, now: float, *aligned: np.ndarray):
        """``rows`` (and arrays aligned with them) without the rows not live at ``now``."""
        if self.live_catalog.always_live or not len(rows):
            return (rows, *aligned) if aligned else rows
        ok = self.live_catalog.mask(rows, now)
        if ok.all():
            return (rows, *aligned) if aligned else rows
        return (rows[ok], *(a[ok] for a in aligned)) if aligned else rows[ok]

    def _retrieve(self, ctx: UserContext, now: float):
        """Candidates from the sources (docs/retrieval.md): ANN first (its failure fails
        retrieval: the caller serves the fallback tier), then fresh, followed and trending
        under ``pipeline.source_budget_ms`` each (late or failing ones are dropped), merged
        under per-source quotas, deduped, short or dropped quotas filled from trending then
        popular. Returns (candidates (n,), source per candidate, scores (n,), user vector
        (D,), category affinity (C,))."""
        p = self.cfg.pipeline
        u, aff_b = self._user_vectors(ctx.history[None, :], now)
        user_vec = u[0]
        aff = aff_b[0]
        live = self._live_items(now)
        prior = self._age_prior()
        scores, ids = self.art.index.search(user_vec[None, :], p.ann_k * (p.ann_oversample if prior else 1), allowed=live)
        ok = ids[0] >= 0
        ann, ann_scores = self._only_live(ids[0][ok].astype(np.int64), now, scores[0][ok])
        if prior is not None:  # freshness/popularity prior: rescore the ANN's top, recent and popular items
            has_history = ctx.has_history  # else the cold_user weights, when fitted
            pop = prior.for_user(has_history).uses_clicks
            ann, ann_scores = self._prior_pool(prior, now).top(  # clicks only count with a popularity weight
                prior, user_vec, ann, self.art.item_vectors, self.catalog.published_at, now, p.ann_k,
                clicks=self.state.item_clicks if pop else None, has_history=has_history,
                affinity=prior.category_share(ctx.history, self.catalog.cat_idx, towers=aff),  # the category term's inputs
                categories=self.catalog.cat_idx)  # (the prior's own estimate of the user's category preference)
        results = [SourceResult("ann", ann, ann_scores)]
        fetchers = self._source_fetchers(ctx, now, aff, live)
        if fetchers:
            pool = None
            if p.source_workers > 0:
                if self._source_pool is None:
                    import concurrent.futures as cf

                    self._source_pool = cf.ThreadPoolExecutor(p.source_workers, thread_name_prefix="feedrank-source")
                pool = self._source_pool
            more, _status = gather_sources(fetchers, {n: p.source_budget_ms for n in fetchers}, executor=pool)
            results.extend(more)
        popular = self._popular_list(now)[: max(p.popular_k, p.rank_max_candidates)]
        results.append(SourceResult("popular", popular, np.zeros(len(popular), dtype=np.float32)))
        exclude = None
        if self.policy.drop_seen and ctx.seen:
            index = self.catalog.index
            exclude = {index[s] for s in ctx.seen if s in index}
        quotas = {"ann": p.ann_k, "fresh": p.fresh_k, "followed": p.followed_k, "trending": p.trending_k,
                  "popular": p.popular_k}
        merged = merge_sources(results, quotas, p.rank_max_candidates, fallbacks=("trending", "popular"), exclude=exclude)
        return merged.items, merged.sources, merged.scores, user_vec, aff

    def _prior_pool(self, prior: AgePrior, now: float) -> RescorePool:
        """The rows the prior rescores besides the ANN's top at ``now``: the newest live items
        (at most ``PRIOR_POOL_MAX``, within ``max(fresh_hours, followed_hours)``) and, with a
        popularity weight, the live top ``ann_k`` of the popular list. Both lists are read
        per request (O(k) walks / a cached list); the pool's vectors are gathered again only
        when its rows change."""
        p = self.cfg.pipeline
        hours = max(p.fresh_hours, p.followed_hours)
        parts = (self._newest(None, None, now, hours * 3600.0, PRIOR_POOL_MAX),)
        n_pop = popular_pool_size(prior, p.ann_k)  # with a popularity weight (the cold users' included)
        if n_pop > 0:
            parts += (self._only_live(self._popular_list(now)[:n_pop], now),)
        key = f"prior-pool:{hours}:{len(parts)}:{p.ann_k}"  # settings views (with_settings) share the cache
        hit = self._source_cache.get(key)
        if hit is None or not hit.same(parts):
            hit = RescorePool.build(parts, self.art.item_vectors, self.catalog.published_at)
            self._source_cache[key] = hit
        return hit

    def _age_prior(self) -> AgePrior | None:
        """The bundle's fitted retrieval prior (None: off, absent or zero weights)."""
        raw = self.art.info.get("age_prior")
        if not self.cfg.retrieval.age_prior or not raw:
            return None
        hit = self._source_cache.get("prior")
        if hit is None or hit[0] is not raw:
            hit = (raw, AgePrior.from_json(raw))
            self._source_cache["prior"] = hit
        return hit[1] if hit[1].active else None

    def _source_fetchers(self, ctx: UserContext, now: float, aff: np.ndarray, live: np.ndarray | None) -> dict:
        """name -> zero-argument callable returning a ``SourceResult``, for the enabled
        sources besides ANN and popular (fresh, followed, trending; in priority order)."""
        p = self.cfg.pipeline
        fetchers = {}
        has_history = ctx.has_history
        zeros = lambda n: np.zeros(n, dtype=np.float32)  # noqa: E731
        if p.fresh_k:
            def fresh() -> SourceResult:
                wanted = None
                if has_history:
                    top_cats = np.argsort(-aff)[:3]
                    wanted = top_cats[top_cats > 0]
                # newest live items of the user's top categories: a walk of the per-category time
                # index, O(fresh_k) (benchmarks/README.md, "Serving")
                got = self._newest("category", wanted if wanted is not None and len(wanted) else None,
                                   now, p.fresh_hours * 3600.0, p.fresh_k)
                return SourceResult("fresh", got, zeros(len(got)))
            fetchers["fresh"] = fresh
        if p.followed_k and has_history:
            def followed() -> SourceResult:
                h = ctx.history[ctx.history >= 0]
                keys = (("creator", self.catalog.creator_hash), ("subcategory", self.catalog.sub_idx))
                queries = [(name, followed_keys(k[h], p.follow_min_clicks, ignore=ig))
                           for (name, k), ig in zip(keys, self._follow_ignore())]
                got = self._newest(None, None, now, p.followed_hours * 3600.0, p.followed_k,
                                   queries=[(n, f) for n, f in queries if len(f)])
                return SourceResult("followed", got, zeros(len(got)))
            fetchers["followed"] = followed
        if p.trending_k and self.art.engagement is not None:
            def trending() -> SourceResult:
                got = self._only_live(self._trending_list(now, live), now)
                return SourceResult("trending", got, zeros(len(got)))
            fetchers["trending"] = trending
        return fetchers

    def _follow_ignore(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Creator / subcategory codes that never count as followed: "unknown" and OOV."""
        from feedrank.features.vocab import hash_ids

        hit = self._source_cache.get("ignore")
        if hit is not None:
            return hit
        unknown_creator = int(hash_ids(np.array(["unknown"], dtype=object), self.cfg.retrieval.id_buckets, salt="c:")[0])
        unknown_sub = int(self.art.vocabs["subcategory"].lookup(["unknown"])[0])
        self._source_cache["ignore"] = ((unknown_creator,), (0, unknown_sub))
        return self._source_cache["ignore"]

    def _trending_list(self, now: float, live: np.ndarray | None) -> np.ndarray:
        """Most engaged recently at ``now``: live items by decayed 6 h click counters (the
        ranker's engagement state, updated by ``observe``), best first, as many as could be
        needed (the merger takes ``trending_k``, then more when filling); cached CACHE_S."""
        from feedrank.ranking.features import DECAY_TAUS_S

        p = self.cfg.pipeline
        n = len(self.catalog)
        key = (p.trending_min_clicks, max(p.trending_k, p.rank_max_candidates), n)
        hit = self._source_cache.get("trending")
        if hit is not None and abs(now - hit[0]) <= CACHE_S and hit[1] == key:
            return hit[2]
        eng = self.art.engagement
        clicks = np.zeros(n)
        m = min(n, eng.decay.shape[1])
        clicks[:m] = decayed_counts(eng.decay[0, :m], eng.decay_t[:m], now, DECAY_TAUS_S[0])
        got = trending_items(clicks, key[1], min_clicks=p.trending_min_clicks, eligible=live)
        self._source_cache["trending"] = (now, key, got)
        return got

    def _with_hot(self, popular: np.ndarray, now: float, age: np.ndarray, n: int) -> np.ndarray:
        """``popular`` with up to half of it replaced by the items clicked most in the
        real-time middle window (live, retrievable ones only), those first."""
        try:
            hot = self.live.hot_items(now, max(1, n // 2))
        except Exception:
            log.exception("real-time hot items failed; popular list without them")
            return popular
        rows = np.asarray([self.catalog.index[i] for i in hot if i in self.catalog.index], dtype=np.int64)
        rows = rows[np.isfinite(age[rows]) & self.live_catalog.mask(rows, now)] if len(rows) else rows
        if not len(rows):
            return popular
        rest = popular[~np.isin(popular, rows)]
        return np.concatenate([rows, rest])[:n]

    def _live_items(self, now: float) -> np.ndarray | None:
        """Items live at ``now`` (None = all, when no row can stop being live). Cached, and
        recomputed when the request clock moves more than ``CACHE_S`` from the cached one
        (so replays and requests with an explicit ``now`` get the right set). Callers
        re-check the rows they keep with ``LiveCatalog.mask`` at ``now``."""
        if self.live_catalog.always_live:
            return None
        with self._popular_lock:
            if self._live is None or abs(now - self._live_at) > CACHE_S:
                self._live = np.flatnonzero(self._catalogue_live_mask(now)).astype(np.int64)
                self._live_at = now
            return self._live

    def _popular_list(self, now: float) -> np.ndarray:
        """Recent popularity at ``now``; recomputed every ``CACHE_S`` of request clock
        (counters move with observed events). Items not live then (expired, replaced, too
        old) count as infinitely old: they follow every live item with clicks, so the list
        (the fallback tier, the top-up of a short feed) stays full when nothing is live."""
        with self._popular_lock:
            if not len(self._popular) or abs(now - self._popular_at) > CACHE_S:
                age = self.catalog.age_seconds(np.arange(len(self.catalog)), now)
                if not self.live_catalog.always_live:  # expired, replaced or too old: no popularity
                    age = np.where(self._catalogue_live_mask(now), age, np.inf)
                n = max(self.cfg.pipeline.popular_k, self.cfg.pipeline.rank_max_candidates)
                self._popular = popular_items(self.state.item_clicks, age, n)
                if self.live is not None:  # what is hot right now (real-time clicks) goes first
                    self._popular = self._with_hot(self._popular, now, age, n)
                self._popular_at = now
            return self._popular
