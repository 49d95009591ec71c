"""Beyond accuracy: what a model serves (coverage, diversity, novelty, freshness, creator
exposure) and how well it ranks for whom (segments, position-debiased metrics, calibration).

Two inputs, both built from a model bundle and a dataset prepared with it:

* ``scored_test(art, prep)``: every test impression (capped) scored by the served ranker:
  calibrated p(click), label, request, user, item, position. Segments, debiased metrics and
  calibration come from these.
* ``served_feeds(art, users, now)``: the Recommender's actual top-k for a sample of users,
  at the end of the data (the moment the bundle would start serving). Coverage, intra-list
  diversity, novelty, freshness and creator exposure come from these.

Definitions are in docs/evaluation.md. Segments: users by train clicks before the split
boundary (``new``: 0, ``light``: 1-4, ``heavy``: >= 5 and the top quintile); items ``cold``
when they had fewer than 20 train impressions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feedrank.evaluation.click_models import ExaminationChoice, debiased_auc, debiased_ndcg, examination_for_log
from feedrank.evaluation.metrics import (
    auc,
    calibration_curve,
    expected_calibration_error,
    gini,
    intra_list_diversity,
    ndcg_at_k,
    novelty,
)
from feedrank.pipeline.artifacts import ModelArtifacts, load_artifacts
from feedrank.pipeline.examples import ranking_examples, spec_from_info

MAX_SCORED = 200_000
COLD_ITEM_IMPRESSIONS = 20
HEAVY_USER_CLICKS = 5


@dataclass(frozen=True)
class Scored:
    """Scored test impressions. Arrays (R,): ``probs`` calibrated p(click), ``labels`` 0/1,
    ``groups`` request codes, ``users`` user codes, ``items`` catalogue indices, ``position``
    0-based slot, ``ts`` epoch s. ``rows`` (R,) the event rows they came from."""

    probs: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    users: np.ndarray
    items: np.ndarray
    position: np.ndarray
    ts: np.ndarray
    rows: np.ndarray


def test_impression_rows(prep, max_rows: int = MAX_SCORED, seed: int = 0) -> np.ndarray:
    """Event rows of test impressions with a request id, whole requests sampled down to ``max_rows``."""
    ev = prep.events
    is_test = np.zeros(len(ev), dtype=bool)
    is_test[prep.split.test_idx] = True
    rows = np.flatnonzero(is_test & ev.mask("impression") & (ev.request_codes >= 0))
    if len(rows) > max_rows:
        rng = np.random.default_rng(seed)
        groups = np.unique(ev.request_codes[rows])
        keep = rng.choice(groups, size=max(1, int(len(groups) * max_rows / len(rows))), replace=False)
        rows = rows[np.isin(ev.request_codes[rows], keep)]
    return rows


def scored_test(art: ModelArtifacts, prep, rows: np.ndarray) -> Scored | None:
    """The served ranker's calibrated p(click) on the given test impression rows (None: no ranker)."""
    if art.ranker is None or len(rows) == 0:
        return None
    from feedrank.ranking.model import logits as ranker_logits

    ev, catalog, cfg = prep.events, prep.catalog, art.cfg
    spec = spec_from_info(art.info.get("ranking"), prep.items, catalog)
    ex = ranking_examples(ev, rows, catalog, art.two_tower, art.item_vectors, len(art.vocabs["category"]),
                          cfg.retrieval.history_len, float(art.info.get("prior_ctr", 0.05)), cfg.ranking.ctr_prior, spec)
    z = ranker_logits(art.ranker, ex.dense, ex.category)
    probs = np.clip(np.asarray(art.calibrator.apply(z), dtype=np.float64), 0.0, 1.0)
    return Scored(probs=probs, labels=ex.labels.astype(np.float64), groups=ex.groups, users=ex.users, items=ex.items,
                  position=ex.position.astype(np.int64), ts=ex.ts, rows=rows)


def train_counts(prep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user clicks (U,), item impressions (N,), item clicking users (N,)) on the train side."""
    ev = prep.events
    tr = np.zeros(len(ev), dtype=bool)
    tr[prep.split.train_idx] = True
    clk, imp = tr & ev.mask("click"), tr & ev.mask("impression")
    n_users = int(ev.user_codes.max(initial=-1)) + 1
    n_items = len(prep.catalog)
    user_clicks = np.bincount(ev.user_codes[clk], minlength=n_users)
    item_imps = np.bincount(ev.item_idx[imp], minlength=n_items)
    pairs = np.unique(ev.user_codes[clk].astype(np.int64) * n_items + ev.item_idx[clk])
    item_users = np.bincount(pairs % n_items, minlength=n_items)
    return user_clicks, item_imps, item_users


def _block(s: Scored, sel: np.ndarray, exam: np.ndarray) -> dict[str, Any]:
    y, p, g = s.labels[sel], s.probs[sel], s.groups[sel]
    out: dict[str, Any] = {"n_impressions": int(sel.sum()), "n_clicks": int(y.sum())}
    if out["n_impressions"] == 0:
        return out
    out["ctr"] = float(y.mean())
    out["mean_pred"] = float(p.mean())
    out["auc"] = float(auc(y, p)) if 0 < y.sum() < len(y) else None
    out["ndcg@10"] = float(ndcg_at_k(y, p, g, 10)) if y.sum() > 0 else None
    out["ece"] = float(expected_calibration_error(y, p))
    if 0 < y.sum() < len(y):
        out["debiased_auc"] = float(debiased_auc(y, p, exam[sel]))
        out["debiased_ndcg@10"] = float(debiased_ndcg(y, p, g, exam[sel], 10))
    return out


def event_propensities(prep) -> np.ndarray:
    """(E,) the logged propensity of each of ``prep.events``' rows (NaN where none was logged).

    ``EventArrays`` does not keep propensities; they are re-read from the dataset's events
    in the same order (sorted by time, stable, rows of catalogued items only) and checked
    against it: all NaN when the dataset has no propensity column or the rows do not line up."""
    ev = prep.events
    nan = np.full(len(ev), np.nan)
    tbl = prep.dataset.events
    if "propensity" not in tbl.column_names:
        return nan
    from feedrank.data.dataset import ts_to_seconds

    order = np.argsort(ts_to_seconds(tbl.column("ts")), kind="stable")
    items = np.asarray(tbl.column("item_id").to_numpy(zero_copy_only=False), dtype=object)[order]
    idx = prep.catalog.indices(items)
    keep = idx >= 0
    if int(keep.sum()) != len(ev) or not np.array_equal(idx[keep], ev.item_idx):
        return nan
    prop = tbl.column("propensity").to_numpy(zero_copy_only=False)
    return np.asarray(prop, dtype=np.float64)[order][keep]


def train_examination(prep) -> ExaminationChoice:
    """The examination curve of the train impressions: harvested from the logging policy's
    randomisation when its feeds were randomised (as `feedrank ope position-bias` does), EM
    otherwise; ``click_models.examination_for_log`` says which and why."""
    ev = prep.events
    tr = np.zeros(len(ev), dtype=bool)
    tr[prep.split.train_idx] = True
    imp_rows = np.flatnonzero(tr & ev.mask("impression") & (ev.position >= 0))
    clicked = _clicked(ev, imp_rows)
    req = ev.request_codes[imp_rows]
    prop = event_propensities(prep)[imp_rows]
    prop = np.where(req >= 0, prop, np.nan)  # an impression without a request id cannot be placed in a feed
    return examination_for_log(ev.item_idx[imp_rows], ev.position[imp_rows], clicked, requests=req,
                               propensities=prop, n_items=len(prep.catalog))


def click_model_block(choice: ExaminationChoice) -> dict[str, Any]:
    """What the report shows about the examination curve used for debiasing."""
    out: dict[str, Any] = {"kind": choice.kind, "method": choice.method, "reason": choice.reason,
                           "theta": np.asarray(choice.curve.theta).round(4).tolist()}
    if choice.method == "harvest":
        out["lo"] = np.asarray(choice.curve.lo).round(4).tolist()
        out["hi"] = np.asarray(choice.curve.hi).round(4).tolist()
    else:
        out["iterations"] = int(choice.curve.iterations)
    return out


def accuracy_breakdown(s: Scored, prep) -> dict[str, Any]:
    """Overall and per-segment ranking metrics, position-debiased with the train impressions'
    examination curve (``train_examination``: harvested or EM), and the calibration curve."""
    choice = train_examination(prep)
    exam = choice.curve.examination(np.maximum(s.position, 0))
    user_clicks, item_imps, _ = train_counts(prep)
    uc = user_clicks[s.users] if len(user_clicks) else np.zeros(len(s.users), dtype=np.int64)
    heavy_cut = max(HEAVY_USER_CLICKS, float(np.quantile(user_clicks[user_clicks > 0], 0.8)) if (user_clicks > 0).any() else 0)
    segments = {
        "users_new": uc == 0,
        "users_light": (uc > 0) & (uc < heavy_cut),
        "users_heavy": uc >= heavy_cut,
        "items_cold": item_imps[s.items] < COLD_ITEM_IMPRESSIONS,
        "items_warm": item_imps[s.items] >= COLD_ITEM_IMPRESSIONS,
    }
    everything = np.ones(len(s.labels), dtype=bool)
    return {
        "overall": _block(s, everything, exam),
        "segments": {k: _block(s, v, exam) for k, v in segments.items()},
        "segment_rules": {"heavy_user_train_clicks": float(heavy_cut), "cold_item_train_impressions": COLD_ITEM_IMPRESSIONS},
        "click_model": click_model_block(choice),
        "calibration_curve": calibration_curve(s.labels, s.probs, 10),
    }


def _clicked(ev, imp_rows: np.ndarray) -> np.ndarray:
    """(len(imp_rows),) 1.0 where the impression (request, position) has a click."""
    clk = np.flatnonzero(ev.mask("click") & (ev.request_codes >= 0) & (ev.position >= 0))
    K = int(max(ev.position.max(initial=0), 0)) + 1
    key_c = ev.request_codes[clk].astype(np.int64) * K + ev.position[clk]
    key_i = ev.request_codes[imp_rows].astype(np.int64) * K + ev.position[imp_rows]
    return np.isin(key_i, key_c).astype(np.float64)


def sample_users(prep, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` users with test-side events, stratified: half heavy/light, half new-ish (at most 1 train click)."""
    ev = prep.events
    te = np.zeros(len(ev), dtype=bool)
    te[prep.split.test_idx] = True
    users = np.unique(ev.user_codes[te])
    if len(users) == 0:
        return []
    uc, _, _ = train_counts(prep)
    rng = np.random.default_rng(seed)
    cold = users[uc[users] <= 1]
    warm = users[uc[users] > 1]
    pick = [rng.choice(a, size=min(len(a), n // 2), replace=False) for a in (cold, warm) if len(a)]
    return [str(ev.user_ids[u]) for u in np.concatenate(pick)]


def served_feeds(art: ModelArtifacts, users: list[str], now: float, k: int = 10) -> dict[str, np.ndarray]:
    """The Recommender's feeds for ``users`` at ``now``. Returns flat (F,) arrays: ``list`` (row
    -> user index), ``item`` (catalogue index), ``rank``, ``source`` (str)."""
    from feedrank.pipeline.recommender import Recommender
    from feedrank.types import FeedRequest

    rec = Recommender(art, art.cfg, clock=lambda: now)
    lists, items, ranks, sources = [], [], [], []
    idx = art.catalog.index
    for j, u in enumerate(users):
        resp = rec.recommend(FeedRequest(user_id=u, k=k, now=now))
        for it in resp.items:
            if it.item_id in idx:
                lists.append(j)
                items.append(idx[it.item_id])
                ranks.append(it.rank)
                sources.append(it.source)
    return {"list": np.asarray(lists, dtype=np.int64), "item": np.asarray(items, dtype=np.int64),
            "rank": np.asarray(ranks, dtype=np.int64), "source": np.asarray(sources, dtype=object)}


def served_metrics(feeds: dict[str, np.ndarray], catalog, now: float, item_users: np.ndarray, n_train_users: int,
                   n_users: int) -> dict[str, Any]:
    """Coverage, intra-list diversity, novelty, freshness and creator exposure of served feeds."""
    it = feeds["item"]
    if len(it) == 0:
        return {"n_feeds": n_users, "n_items_served": 0}
    pub = catalog.published_at
    live = np.isfinite(pub) & (pub <= now)
    age_h = (now - pub[it]) / 3600.0
    creators = catalog.creators
    # exposure: position-weighted (1 / log2(rank + 1)) per creator, over all creators with a live item
    w = 1.0 / np.log2(feeds["rank"].astype(np.float64) + 1.0)  # ranks are 1-based
    cr_codes, cr_names = _codes(creators)
    expo = np.bincount(cr_codes[it], weights=w, minlength=len(cr_names))
    live_creators = np.unique(cr_codes[live])
    groups = catalog.creator_groups
    out: dict[str, Any] = {
        "n_feeds": int(n_users),
        "n_items_served": int(len(it)),
        "catalog_coverage": float(len(np.unique(it)) / max(1, int(live.sum()))),
        "intra_list_diversity": float(intra_list_diversity(feeds["list"], catalog.categories[it])),
        "novelty_bits": float(novelty(item_users[it], max(1, n_train_users))),
        "freshness_mean_age_h": float(np.nanmean(age_h)),
        "freshness_share_under_24h": float(np.nanmean(age_h < 24.0)),
        "creator_exposure_gini": float(gini(expo[live_creators])) if len(live_creators) else None,
        "sources": {str(k): int(v) for k, v in zip(*np.unique(feeds["source"].astype(str), return_counts=True))},
        "lorenz_exposure": expo[live_creators].tolist(),
    }
    gnames = [g for g in np.unique(groups.astype(str)) if g != "unknown"]
    if len(gnames) >= 2:
        tot = float(w.sum())
        per = {}
        for g in gnames:
            in_g = groups.astype(str) == g
            per[g] = {
                "exposure_share": float(w[in_g[it]].sum() / tot),
                "catalog_share": float((in_g & live).sum() / max(1, int(live.sum()))),
            }
            per[g]["ratio"] = per[g]["exposure_share"] / per[g]["catalog_share"] if per[g]["catalog_share"] > 0 else None
        out["creator_groups"] = per
        ratios = [v["ratio"] for v in per.values() if v["ratio"]]
        out["group_disparity"] = float(max(ratios) / min(ratios)) if len(ratios) >= 2 else None
    return out


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, codes = np.unique(values.astype(str), return_inverse=True)
    return codes.astype(np.int64), names


def evaluate_beyond(art: ModelArtifacts, prep, *, n_users: int = 400, max_scored: int = MAX_SCORED, seed: int = 0,
                    rows: np.ndarray | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Segments, debiased metrics, calibration and served-feed metrics for one model."""
    out: dict[str, Any] = {}
    rows = test_impression_rows(prep, max_scored, seed) if rows is None else rows
    s = scored_test(art, prep, rows)
    if s is not None:
        out["accuracy"] = accuracy_breakdown(s, prep)
    now = float(prep.split.test.ts_max or prep.split.boundary)
    users = sample_users(prep, n_users, seed)
    _, _, item_users = train_counts(prep)
    feeds = served_feeds(art, users, now)
    n_train_users = int((train_counts(prep)[0] > 0).sum())
    out["served"] = served_metrics(feeds, prep.catalog, now, item_users, n_train_users, len(users))
    out["served"]["now"] = now
    say(f"beyond: {len(users)} feeds, coverage {out['served'].get('catalog_coverage', 0):.3f}, "
        f"ILD {out['served'].get('intra_list_diversity', float('nan')):.3f}, "
        f"creator Gini {out['served'].get('creator_exposure_gini') or float('nan'):.3f}")
    return out, s


def load_and_prepare(model_dir: str | Path, data_dir: str | Path | None = None, say: Callable[[str], None] = print):
    """(artifacts, prepared dataset) as ``feedrank eval`` uses them; ``data_dir`` defaults to
    the dataset the bundle was trained on (its manifest's ``dataset.path``)."""
    from feedrank.errors import NotFound
    from feedrank.pipeline.build import prepare

    art = load_artifacts(model_dir)
    if data_dir is None:
        data_dir = (art.info.get("dataset") or {}).get("path")
        if not data_dir or not Path(data_dir).exists():
            raise NotFound(f"{model_dir}: its training data ({data_dir!r}) is not here; pass --data")
    prep = prepare(data_dir, art.cfg, vocabs=art.vocabs, say=say)
    if len(prep.catalog) != len(art.catalog) or not np.array_equal(prep.catalog.item_ids, art.catalog.item_ids):
        art.use_catalog(prep.catalog, say)
    return art, prep
