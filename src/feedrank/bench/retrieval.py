"""`feedrank bench retrieval`: retrieval quality side by side, cold start, and ANN speed.

    quality = run_quality("var/ml100k", cfg)       # two-tower vs popularity vs ALS (+ oracle)
    speed = run_speed(n_items=1_000_000, dim=64)    # flat / hnsw / ivfpq build, memory, latency

Quality protocol (same as ``feedrank eval``): events split by time; users with clicks in
the test period (at most ``max_users``); each method ranks the items live in the test
period, minus what the user clicked before the boundary; relevant = the user's test
clicks. ``cold`` = relevant items with no train click (new since the cut-off, or never
clicked), ``warm`` = the rest; recall@100 is reported on each.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from feedrank.config import FeedrankConfig
from feedrank.evaluation.metrics import ndcg_at_k_lists, recall_at_k

KS = (10, 50, 100)


def _metrics(lists: list[list[int]], relevant: list[set[int]], warm: np.ndarray) -> dict[str, float]:
    out = {f"recall@{k}": round(float(recall_at_k(lists, relevant, k)), 4) for k in KS}
    out["ndcg@10"] = round(float(ndcg_at_k_lists(lists, relevant, 10)), 4)
    cold_rel = [{i for i in r if not warm[i]} for r in relevant]
    warm_rel = [{i for i in r if warm[i]} for r in relevant]
    c = recall_at_k(lists, cold_rel, 100)
    w = recall_at_k(lists, warm_rel, 100)
    out["recall@100_cold"] = None if np.isnan(c) else round(float(c), 4)
    out["recall@100_warm"] = None if np.isnan(w) else round(float(w), 4)
    return out


def _top_lists(scores: np.ndarray, allowed_mask: np.ndarray, past: list[set[int]], k: int = 100) -> list[list[int]]:
    """Rows of (U, N) ``scores`` -> top-k item lists among allowed items, minus past clicks."""
    s = np.where(allowed_mask[None, :], scores, -np.inf)
    m = min(k + max((len(p) for p in past), default=0), s.shape[1])
    top = np.argpartition(-s, m - 1, axis=1)[:, :m]
    order = np.take_along_axis(s, top, 1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(top, order, 1)
    out = []
    for j, row in enumerate(top.tolist()):
        out.append([i for i in row if i not in past[j] and np.isfinite(s[j, i])][:k])
    return out


def run_quality(data_dir: str | Path, cfg: FeedrankConfig, oracle: bool = True, max_users: int = 3000,
                show_progress: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the two-tower on the train side of ``data_dir`` and measure it against
    popularity, ALS (``implicit``) and, for synthetic worlds, the oracle."""
    from feedrank.evaluation.offline import live_items
    from feedrank.pipeline.build import item_content, learn_max_item_age, prepare, shown_not_clicked
    from feedrank.retrieval.encode import encode_items, encode_users
    from feedrank.retrieval.train import train_two_tower
    from feedrank.training.common import seed_everything, setup_threads

    setup_threads(cfg.training.threads)
    rng = seed_everything(cfg.training.seed)
    prep = prepare(data_dir, cfg, say=say)
    ev, split, catalog = prep.events, prep.split, prep.catalog
    n_items = len(catalog)
    is_train = np.zeros(len(ev), dtype=bool)
    is_train[split.train_idx] = True
    is_test = ~is_train
    clicks = ev.click_log(np.flatnonzero(is_train))
    t = time.perf_counter()
    content, content_kind = item_content(cfg, catalog, say)
    tt, report = train_two_tower(cfg.retrieval, catalog, clicks, len(prep.vocabs["category"]), len(prep.vocabs["subcategory"]),
                                 rng, show_progress, content=content, shown=shown_not_clicked(ev, is_train))
    train_s = time.perf_counter() - t
    say(f"two-tower trained in {train_s:.1f}s ({content_kind} content)")
    max_age = learn_max_item_age(cfg.retrieval.max_item_age_hours, clicks, catalog)

    test_clicks = is_test & ev.mask("click")
    if (test_clicks & (ev.request_codes >= 0)).any():
        test_clicks &= ev.request_codes >= 0
    users = np.unique(ev.user_codes[test_clicks])
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(cfg.training.seed).choice(users, size=max_users, replace=False))
    allowed = live_items(catalog.published_at, split.boundary, float(split.test.ts_max or split.boundary), max_age)
    allowed_mask = np.ones(n_items, dtype=bool) if allowed is None else np.isin(np.arange(n_items), allowed)
    past = [set(clicks.items[clicks.starts[u]:clicks.ends[u]].tolist()) for u in users]
    tu, ti = ev.user_codes[test_clicks], ev.item_idx[test_clicks]
    relevant = [set() for _ in users]
    pos = {int(u): j for j, u in enumerate(users)}
    for u, i in zip(tu.tolist(), ti.tolist()):
        j = pos.get(u)
        if j is not None and i not in past[j]:
            relevant[j].add(i)
    warm = np.bincount(clicks.items, minlength=n_items) > 0

    out: dict[str, Any] = {"dataset": str(data_dir), "source": prep.dataset.meta.source, "n_items": n_items,
                           "n_users_evaluated": int(len(users)), "train_clicks": int(len(clicks.items)),
                           "content_encoder": content_kind, "two_tower_train_s": round(train_s, 1),
                           "cold_share_of_relevant": round(float(np.mean([not warm[i] for r in relevant for i in r])), 4)
                           if any(relevant) else None, "methods": {}}
    vecs = encode_items(tt, catalog)
    hist = clicks.final_histories(cfg.retrieval.history_len)[users]
    uvec = encode_users(tt, catalog, hist, np.full(len(users), split.boundary), item_vecs=vecs)
    out["methods"]["two_tower"] = _metrics(_top_lists(uvec @ vecs.T, allowed_mask, past), relevant, warm)
    pop = np.bincount(clicks.items, minlength=n_items).astype(np.float64)
    out["methods"]["popularity"] = _metrics(_top_lists(np.broadcast_to(pop, (len(users), n_items)), allowed_mask, past),
                                            relevant, warm)
    als = _als_scores(clicks, users, n_items, cfg.training.seed)
    if als is not None:
        out["methods"]["als"] = _metrics(_top_lists(als, allowed_mask, past), relevant, warm)
    if oracle and (Path(prep.dataset.root) / "truth").exists():
        oracle_scores = _oracle_scores(prep, ev, users, split.boundary)
        out["methods"]["oracle"] = _metrics(_top_lists(oracle_scores, allowed_mask, past), relevant, warm)
        o = out["methods"]["oracle"]["recall@100"]
        out["two_tower_recall@100_vs_oracle"] = round(out["methods"]["two_tower"]["recall@100"] / o, 4) if o else None
    tw = out["methods"]["two_tower"]
    if tw["recall@100_cold"] is not None and tw["recall@100_warm"]:
        out["two_tower_cold_vs_warm_recall@100"] = round(tw["recall@100_cold"] / tw["recall@100_warm"], 4)
    for name, m in out["methods"].items():
        say(f"  {name:10s} recall@10 {m['recall@10']:.4f}  @50 {m['recall@50']:.4f}  @100 {m['recall@100']:.4f}  "
            f"nDCG@10 {m['ndcg@10']:.4f}  cold@100 {m['recall@100_cold']}  warm@100 {m['recall@100_warm']}")
    return out


def _als_scores(clicks, users: np.ndarray, n_items: int, seed: int) -> np.ndarray | None:
    """(U, N) ALS scores (implicit 0.7, factors 64, 15 iterations, bm25-free raw counts)."""
    try:
        import implicit
        from scipy.sparse import csr_matrix
    except ImportError:
        return None
    n_users = len(clicks.starts)
    m = csr_matrix((np.ones(len(clicks.items), dtype=np.float32), (clicks.user_codes, clicks.items)), shape=(n_users, n_items))
    m.sum_duplicates()
    model = implicit.cpu.als.AlternatingLeastSquares(factors=64, regularization=0.05, iterations=15, random_state=seed,
                                                     calculate_training_loss=False)
    model.fit(m, show_progress=False)
    return np.asarray(model.user_factors[users] @ model.item_factors.T, dtype=np.float32)


def _oracle_scores(prep, ev, users: np.ndarray, ts: float) -> np.ndarray:
    """(U, N) true attractiveness at the split boundary (synthetic worlds)."""
    from feedrank.data.synth.truth import WorldTruth

    truth = WorldTruth.load(prep.dataset.root)
    ids = prep.catalog.item_ids.astype(str)
    out = np.zeros((len(users), len(ids)), dtype=np.float32)
    for j, u in enumerate(ev.user_ids[users].astype(str)):
        out[j] = truth.attractiveness(np.full(len(ids), u, dtype=object), ids, ts)
    return out


def run_speed(n_items: int = 1_000_000, dim: int = 64, n_queries: int = 300, seed: int = 0,
              kinds: tuple[str, ...] = ("flat", "hnsw", "ivfpq"), say: Callable[[str], None] = print) -> dict[str, Any]:
    """ANN speed on a synthetic clustered corpus (N, dim) of unit vectors: build seconds,
    index bytes, p50/p99 ms per query at batch 1 (one thread), recall@100 vs exact."""
    import faiss

    from feedrank.retrieval.index import build_index

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centers[rng.integers(0, 1000, n_items)] + 0.5 * rng.standard_normal((n_items, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = centers[rng.integers(0, 1000, n_queries)] + 0.5 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    threads = faiss.omp_get_max_threads()
    out: dict[str, Any] = {"n_items": n_items, "dim": dim, "n_queries": n_queries, "build_threads": threads,
                           "query_threads": 1, "kinds": {}}
    truth = None
    for kind in kinds:
        faiss.omp_set_num_threads(threads)
        t = time.perf_counter()
        index = build_index(x, kind, seed=seed)
        build_s = time.perf_counter() - t
        nbytes = int(faiss.serialize_index(index.index).nbytes)
        faiss.omp_set_num_threads(1)
        lat = []
        ids = np.zeros((n_queries, 100), dtype=np.int64)
        for j in range(n_queries):
            t = time.perf_counter()
            _, got = index.search(q[j : j + 1], 100)
            lat.append((time.perf_counter() - t) * 1000.0)
            ids[j] = got[0]
        if kind == "flat":
            truth = ids
        row: dict[str, Any] = {"build_s": round(build_s, 2), "index_mb": round(nbytes / 2**20, 1),
                               "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3)}
        if truth is not None:
            row["recall@100_vs_exact"] = round(float(np.mean([len(set(a) & set(b)) / 100.0 for a, b in zip(truth, ids)])), 4)
        out["kinds"][kind] = row
        say(f"  {kind:6s} build {row['build_s']}s  {row['index_mb']} MB  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
            f"recall@100 {row.get('recall@100_vs_exact')}")
        del index
    faiss.omp_set_num_threads(threads)
    if "flat" in out["kinds"]:
        for kind, row in out["kinds"].items():
            row["speedup_p50_vs_exact"] = round(out["kinds"]["flat"]["p50_ms"] / max(row["p50_ms"], 1e-6), 1)
    return out
