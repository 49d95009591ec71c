"""ANN indexes at the serving k on a bundle: CPU per single-query search (one thread) and
recall against exact search, with the bundle's own serving user vectors as queries (the
user mix of ``serve_cpu_ab.py``: 90% known users, 10% new). "served overlap" is the share
of the prior-rescored ANN list (index top K + the newest pool, ``u.v/T`` + the bundle's age
prior, top ``ann_k``) equal to the same list computed from the exact top K.

    .venv/bin/python benchmarks/ann_serving_k.py var/bench/serve/u1000000-i1000000-d5/model \\
        --ef 600,800 --ivf var/bench/serve/u1000000-i1000000-d5/model-ivf/index.faiss --nprobe 32,64,96

The bundle's index is searched as serving does for an HNSW (efSearch = max(setting, k)) at
each ``--ef``; ``--ivf`` files at each ``--nprobe``. Results go to stdout (no results file).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.recommender import Recommender
from feedrank.retrieval.served import PRIOR_POOL_MAX


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", default="600", help="HNSW efSearch values for the bundle's index (if it is HNSW)")
    ap.add_argument("--ivf", action="append", default=[], help="an IVF index file over the bundle's item vectors")
    ap.add_argument("--nprobe", default="32,64,96")
    args = ap.parse_args()
    art = load_artifacts(args.model)
    rec = Recommender(art, art.cfg)
    p, prior = rec.cfg.pipeline, rec._age_prior()
    k = p.ann_k * (p.ann_oversample if prior is not None else 1)
    rng = np.random.default_rng(0)
    known = art.snapshot.user_ids
    users = [str(known[i]) if rng.random() < 0.9 else f"new-{i}" for i in rng.integers(0, len(known), args.queries)]
    pub = rec.catalog.published_at
    now = float(np.nanmax(pub))  # the end of the data: a full newest pool
    q = np.stack([rec._user_vectors(rec.state.context(u, now).history[None, :], now)[0][0] for u in users])
    x = np.ascontiguousarray(art.item_vectors, dtype=np.float32)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(q, k)
    faiss.omp_set_num_threads(1)
    pool = rec._newest(None, None, now, max(p.fresh_hours, p.followed_hours) * 3600.0, PRIOR_POOL_MAX)

    def served(ids: np.ndarray, u: np.ndarray) -> set[int]:
        if prior is None:
            return set(ids[: p.ann_k].tolist())
        got, _ = rec._prior_pool(prior, now).top(prior, u, ids, x, pub, now, p.ann_k, clicks=rec.state.item_clicks)
        return set(got.tolist())

    want = [served(truth[i], q[i]) for i in range(len(q))]
    print(f"{args.model}: {len(x):,} items, k = {k}, {len(q)} queries, newest pool {len(pool)}, threads 1")

    def report(name: str, search) -> None:
        c0 = time.process_time()
        got = [search(q[i:i + 1])[0] for i in range(len(q))]
        ms = 1000.0 * (time.process_time() - c0) / len(q)
        r_k = np.mean([len(set(g.tolist()) & set(t.tolist())) / k for g, t in zip(got, truth)])
        r_100 = np.mean([len(set(g[:100].tolist()) & set(t[:100].tolist())) / 100 for g, t in zip(got, truth)])
        sv = np.mean([len(served(g, q[i]) & want[i]) / max(len(want[i]), 1) for i, g in enumerate(got)])
        print(f"{name:40s} cpu {ms:.3f} ms/query  recall@{k} {r_k:.4f}  recall@100 {r_100:.4f}  served overlap {sv:.4f}",
              flush=True)

    if art.index.kind == "hnsw":
        for ef in map(int, args.ef.split(",")):
            params = faiss.SearchParametersHNSW(efSearch=max(ef, k))
            report(f"bundle hnsw efSearch {max(ef, k)}", lambda v, params=params: art.index.index.search(v, k, params=params)[1])
    else:
        report(f"bundle {art.index.kind}", lambda v: art.index.search(v, k)[1])
    for path in args.ivf:
        index = faiss.read_index(path)
        for nprobe in map(int, args.nprobe.split(",")):
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            report(f"{Path(path).parent.name}/{Path(path).name} nprobe {nprobe}",
                   lambda v, params=params: index.search(v, k, params=params)[1])


if __name__ == "__main__":
    main()
