"""Offline evaluation of a model on the test side of a time split.

    metrics = evaluate_model("var/world", "var/model")           # dict, JSON-ready

retrieval: for users with clicks in the test period, retrieval as served (history as of
the boundary; the ANN's top, the recent pool and the popular list rescored with the
bundle's fitted prior, ``retrieval/served.py``) from the items live in the test period,
minus items they clicked before it; relevant = their test clicks. ``retrieval_tower`` is
the ANN alone. ranking: every test impression, scored with point-in-time
features (events strictly before it), grouped by request. Both also report a popularity
baseline; synthetic worlds can add the oracle (true attractiveness) with ``oracle=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from feedrank.evaluation.metrics import (
    auc,
    coverage,
    expected_calibration_error,
    impression_metrics,
    ndcg_at_k_lists,
    recall_at_k,
)
from feedrank.features.history import counts_before
from feedrank.pipeline.artifacts import ModelArtifacts, load_artifacts
from feedrank.pipeline.examples import ranking_examples, spec_from_info
from feedrank.retrieval.counters import CounterReplay, ItemCounters, creator_codes
from feedrank.retrieval.encode import encode_users
from feedrank.retrieval.prior import AgePrior
from feedrank.retrieval.served import popular_pool_size, prior_pool, served_top

MAX_EVAL_USERS = 5000
MAX_EVAL_IMPRESSIONS = 400_000


def live_items(published_at: np.ndarray, start: float, end: float, max_age_s: float | None) -> np.ndarray | None:
    """Items retrievable at some time in [start, end]: published by ``end`` and, with an
    age limit, not expired before ``start``. None = every item (no limit, all published)."""
    pub = np.nan_to_num(published_at, nan=-np.inf)
    ok = pub <= end
    if max_age_s is not None:
        ok &= pub + max_age_s >= start
    return None if ok.all() else np.flatnonzero(ok).astype(np.int64)


def served_prior(art: ModelArtifacts) -> AgePrior | None:
    """The retrieval prior serving applies (``pipeline/candidates.py``): the bundle's fitted
    one, unless ``retrieval.age_prior`` is off or its weights are all 0."""
    raw = art.info.get("age_prior")
    if not art.cfg.retrieval.age_prior or not raw:
        return None
    prior = AgePrior.from_json(raw)
    return prior if prior.active else None


def boundary_counters(ev, is_train: np.ndarray, catalog) -> ItemCounters:
    """Item counters as the bundle holds them at the split: every train click (and impression)."""
    clk, imp = is_train & ev.mask("click"), is_train & ev.mask("impression")
    rep = CounterReplay(len(catalog), ev.item_idx[clk], ev.ts[clk], ev.item_idx[imp], ev.ts[imp],
                        creator_codes(catalog.creators))
    rep.advance(np.inf)
    return rep.snapshot()


def _ranking_block(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    m = impression_metrics(labels, scores, groups)
    return {
        "auc": float(auc(labels, scores)),
        "gauc": float(m["gauc"]),
        "mrr": float(m["mrr"]),
        "ndcg@5": float(m["ndcg@5"]),
        "ndcg@10": float(m["ndcg@10"]),
        "impression_auc": float(m["auc"]),
        "n_impressions": int(len(labels)),
        "n_groups": int(m.get("n_groups", 0)),
    }


def evaluate_prepared(art: ModelArtifacts, prep, oracle: bool = False, seed: int = 0,
                      say: Callable[[str], None] = print) -> dict[str, Any]:
    """Metrics for ``art`` on ``prep`` (a ``pipeline.build.Prepared``)."""
    ev, split, catalog = prep.events, prep.split, prep.catalog
    cfg = art.cfg
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"retrieval": None, "ranking": None, "baselines": {}, "split": None}
    from feedrank.data.split import split_to_dict

    out["split"] = split_to_dict(split)
    is_test = np.zeros(len(ev), dtype=bool)
    is_test[split.test_idx] = True
    is_train = np.zeros(len(ev), dtype=bool)
    is_train[split.train_idx] = True
    clk = ev.mask("click")

    # ---------------------------------------------------------------- retrieval
    # Targets are test clicks. Where the test side has clicks on logged impressions (MIND),
    # only those count: clicks without a request (imported histories) are context.
    test_clicks = is_test & clk
    if (test_clicks & (ev.request_codes >= 0)).any():
        test_clicks &= ev.request_codes >= 0
    users = np.unique(ev.user_codes[test_clicks])
    if len(users):
        if len(users) > MAX_EVAL_USERS:
            users = np.sort(rng.choice(users, size=MAX_EVAL_USERS, replace=False))
        train_log = ev.click_log(np.flatnonzero(is_train))
        hist = train_log.final_histories(cfg.retrieval.history_len)[users]
        uvec = encode_users(art.two_tower, catalog, hist, np.full(len(users), split.boundary), item_vecs=art.item_vectors)
        extra = int((train_log.ends - train_log.starts)[users].max(initial=0))
        allowed = live_items(catalog.published_at, split.boundary, float(split.test.ts_max or split.boundary),
                             art.info.get("max_item_age_s"))
        prior = served_prior(art)
        over = cfg.pipeline.ann_k * cfg.pipeline.ann_oversample if prior is not None else 0
        _, ids = art.index.search(uvec, max(100, over) + extra, allowed=allowed)
        relevant, retrieved, tower = [], [], []
        tc_users, tc_items = ev.user_codes[test_clicks], ev.item_idx[test_clicks]
        order = np.argsort(tc_users, kind="stable")
        tc_users, tc_items = tc_users[order], tc_items[order]
        lo = np.searchsorted(tc_users, users, side="left")
        hi = np.searchsorted(tc_users, users, side="right")
        if prior is not None:
            counters = boundary_counters(ev, is_train, catalog)
            live_mask = np.ones(len(catalog), dtype=bool) if allowed is None else np.isin(np.arange(len(catalog)), allowed)
            hours = max(cfg.pipeline.fresh_hours, cfg.pipeline.followed_hours)
            pool = prior_pool(catalog.published_at, live_mask, split.boundary, hours, counters.clicks,
                              popular_pool_size(prior, cfg.pipeline.ann_k))
        for j, u in enumerate(users):
            past_rows = train_log.items[train_log.starts[u]:train_log.ends[u]]
            past = set(past_rows.tolist())
            row = [i for i in ids[j].tolist() if i >= 0 and i not in past][:100]
            tower.append(row)
            if prior is not None:
                row = served_top(prior, uvec[j], ids[j], pool, art.item_vectors, catalog.published_at, split.boundary, 100,
                                 counters, past_rows, has_history=len(past_rows) > 0,
                                 affinity=prior.user_affinity(hist[j:j + 1], catalog.cat_idx)[0],
                                 categories=catalog.cat_idx).tolist()
            retrieved.append(row)
            relevant.append(set(tc_items[lo[j]:hi[j]].tolist()))
        out["retrieval"] = {
            "recall@10": float(recall_at_k(retrieved, relevant, 10)),
            "recall@100": float(recall_at_k(retrieved, relevant, 100)),
            "ndcg@10": float(ndcg_at_k_lists(retrieved, relevant, 10)),
            "coverage@100": float(coverage(retrieved, len(catalog), k=100)),
            "n_users": int(len(users)),
            "scoring": "served: ANN top + recent pool + popular list, rescored with the fitted prior" if prior is not None
            else "ANN (u.v) alone: the bundle has no active prior",
        }
        out["retrieval_tower"] = {
            "recall@10": float(recall_at_k(tower, relevant, 10)),
            "recall@100": float(recall_at_k(tower, relevant, 100)),
            "ndcg@10": float(ndcg_at_k_lists(tower, relevant, 10)),
            "scoring": "ANN (u.v) alone, without the prior",
        }
        # popularity baseline: most clicked in train, minus the user's past clicks
        pop_counts = np.bincount(train_log.items, minlength=len(catalog)).astype(np.float64)
        if allowed is not None:
            mask = np.zeros(len(catalog), dtype=bool)
            mask[allowed] = True
            pop_counts[~mask] = -1.0
        pop = np.argsort(-pop_counts, kind="stable")[: 100 + extra].tolist()
        pop_lists = []
        for j, u in enumerate(users):
            past = set(train_log.items[train_log.starts[u]:train_log.ends[u]].tolist())
            pop_lists.append([i for i in pop if i not in past][:100])
        out["baselines"]["retrieval_popular"] = {
            "recall@10": float(recall_at_k(pop_lists, relevant, 10)),
            "recall@100": float(recall_at_k(pop_lists, relevant, 100)),
            "ndcg@10": float(ndcg_at_k_lists(pop_lists, relevant, 10)),
        }
        say(f"eval retrieval: {len(users):,} users, recall@100 {out['retrieval']['recall@100']:.3f} (popular {out['baselines']['retrieval_popular']['recall@100']:.3f})")

    # ---------------------------------------------------------------- ranking
    rows = np.flatnonzero(is_test & ev.mask("impression") & (ev.request_codes >= 0))
    if len(rows) and art.ranker is not None:
        if len(rows) > MAX_EVAL_IMPRESSIONS:
            keep_groups = np.unique(ev.request_codes[rows])
            keep_groups = rng.choice(keep_groups, size=max(1, int(len(keep_groups) * MAX_EVAL_IMPRESSIONS / len(rows))), replace=False)
            rows = rows[np.isin(ev.request_codes[rows], keep_groups)]
        n_cat = len(art.vocabs["category"])
        spec = spec_from_info(art.info.get("ranking"), prep.items, catalog)
        ex = ranking_examples(ev, rows, catalog, art.two_tower, art.item_vectors, n_cat, cfg.retrieval.history_len,
                              float(art.info.get("prior_ctr", 0.05)), cfg.ranking.ctr_prior, spec)
        block, variants = ranking_report(art, ex, None if spec is None else spec.creator_new[ex.items] > 0)
        out["ranking"] = block
        out["ranking_variants"] = variants
        out["baselines"]["ranking_recency"] = _ranking_block(ex.labels, -catalog.age_seconds(ex.items, ex.ts), ex.groups)
        imp = ev.mask("impression")
        pop_scores = counts_before(ev.item_idx[clk], ev.ts[clk], ex.items, ex.ts, len(catalog)).astype(np.float64)
        pop_scores += 1e-6 * counts_before(ev.item_idx[imp], ev.ts[imp], ex.items, ex.ts, len(catalog))
        out["baselines"]["ranking_popular"] = _ranking_block(ex.labels, pop_scores, ex.groups)
        out["baselines"]["ranking_tower_similarity"] = _ranking_block(ex.labels, ex.dense[:, 0], ex.groups)
        if oracle:
            out["oracle"] = _oracle(prep, ev, ex)
        say(f"eval ranking: {len(rows):,} test impressions, AUC {block['auc']:.4f} (popular {out['baselines']['ranking_popular']['auc']:.4f})")
    return out


def ranking_report(art: ModelArtifacts, ex, protected: np.ndarray | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The served ranker's block (calibrated p(click); ECE before/after calibration; exposure
    disparity between creator groups) and the same for its int8 and distilled variants."""
    from feedrank.ranking.compress import quantize_int8
    from feedrank.ranking.fairness import exposure_disparity
    from feedrank.ranking.model import logits as ranker_logits

    z = ranker_logits(art.ranker, ex.dense, ex.category)
    probs = art.calibrator.apply(z)
    block = _ranking_block(ex.labels, probs, ex.groups)
    block["ece"] = float(expected_calibration_error(ex.labels, probs))
    block["ece_uncalibrated"] = float(expected_calibration_error(ex.labels, 1.0 / (1.0 + np.exp(-z.astype(np.float64)))))
    block["calibration"] = art.calibrator.kind
    if protected is not None:
        block["fairness"] = exposure_disparity(z, ex.groups, protected)
    variants: dict[str, Any] = {}
    models = {"int8": quantize_int8(art.ranker)}
    if art.ranker_small is not None:
        models["distilled"] = art.ranker_small
    for name, m in models.items():
        zv = ranker_logits(m, ex.dense, ex.category)
        variants[name] = _ranking_block(ex.labels, zv, ex.groups)
    return block, variants


def _oracle(prep, ev, ex) -> dict[str, Any] | None:
    """Ranking metrics of the true attractiveness (synthetic worlds only)."""
    truth_dir = Path(prep.dataset.root) / "truth"
    if not truth_dir.exists():
        return None
    from feedrank.data.synth.truth import WorldTruth

    truth = WorldTruth.load(prep.dataset.root)
    user_ids = ev.user_ids[ex.users].astype(str)
    item_ids = prep.catalog.item_ids[ex.items].astype(str)
    a = truth.attractiveness(user_ids, item_ids, ex.ts)
    return {"ranking": _ranking_block(ex.labels, a, ex.groups)}


def evaluate_model(data_dir: str | Path, model_dir: str | Path, oracle: bool = False,
                   say: Callable[[str], None] = print) -> dict[str, Any]:
    """Load a bundle and evaluate it on ``data_dir`` split as at training time."""
    from feedrank.pipeline.build import prepare

    art = load_artifacts(model_dir)
    prep = prepare(data_dir, art.cfg, vocabs=art.vocabs, say=say)
    if len(prep.catalog) != len(art.catalog) or not np.array_equal(prep.catalog.item_ids, art.catalog.item_ids):
        art.use_catalog(prep.catalog, say)  # evaluating on other data: its catalogue, the trained towers
    out = evaluate_prepared(art, prep, oracle=oracle, say=say)
    out["model_version"] = art.version
    return out
