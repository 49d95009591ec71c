"""ANN indexes at the serving k on a bundle: CPU per single-query search (one thread) and
recall against exact search, with the bundle's own serving user vectors as queries (the
user mix of ``serve_cpu_ab.py``: 90% known users, 10% new). "served overlap" is the share
of the prior-rescored ANN list (index top K + the newest pool, ``u.v/T`` + the bundle's age
prior, top ``ann_k``) equal to the same list computed from the exact top K.

    # the bundle's own index, as serving calls it (FaissIndex.search, the live-set filter)
    .venv/bin/python benchmarks/ann_serving_k.py var/bench/serve/u1000000-i1000000-d5/model
    # plus IVF files over the bundle's item vectors, at each --nprobe
    .venv/bin/python benchmarks/ann_serving_k.py var/bench/serve/u1000000-i1000000-d5/model \\
        --ivf var/bench/serve/u1000000-i1000000-d5/model-ivf/index.faiss --nprobe 32,64,96
    # candidates built here from the bundle's item vectors (FAISS index_factory strings,
    # inner product), at each --nprobe and, for a refine stage (",RFlat"), each --k-factor
    .venv/bin/python benchmarks/ann_serving_k.py MODEL --factory IVF4096_HNSW32,PQ16x4fs,RFlat \\
        --factory IVF2000,SQ8 --nprobe 32,64 --k-factor 2,4 --json /tmp/ann.json
    # what retrieval/index.py builds for a kind (its defaults or the bundle's config)
    .venv/bin/python benchmarks/ann_serving_k.py MODEL --kind ivfsq --kind ivfflat
    # A/B: the bundle against an older index file, 8 interleaved rounds, at several k
    .venv/bin/python benchmarks/ann_serving_k.py MODEL --ivf OLD/index.faiss --nprobe 64 --rounds 8 --k 10,300,600

Per row: CPU ms per query (process CPU over all queries; with ``--rounds`` the median round,
the rounds interleaved across indexes), p50/p99 of the per-query thread CPU over all rounds,
recall@k and recall@100 vs exact, served overlap (the served list from that k's hits); per
built index its build seconds (wall and process CPU, all faiss threads) and size
(serialised bytes). HNSW bundles are searched as serving does (efSearch = max(setting, k))
at each ``--ef``. The header gives how close the neighbours' scores are (median exact score
at ranks 1, 100 and k), which decides how coarse a code may be. Results go to stdout, and to
``--json`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.recommender import Recommender
from feedrank.retrieval.index import KINDS, IndexParams, build_index, train_sample
from feedrank.retrieval.served import PRIOR_POOL_MAX


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise SystemExit(f"not a comma-separated list of integers: {text!r}") from exc


def build_factory(spec: str, x: np.ndarray, seed: int = 0) -> faiss.Index:
    """An inner-product ``faiss.index_factory(d, spec)`` index over ``x``, trained on the
    sample ``retrieval/index.py`` uses (39 points per list)."""
    try:
        index = faiss.index_factory(x.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise SystemExit(f"--factory {spec!r}: not a FAISS index_factory string: {exc}") from exc
    try:
        nlist = int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        nlist = 256
    index.train(train_sample(x, nlist, seed))
    index.add(x)
    return index


def _search_params(index: faiss.Index, nprobe: int, k_factor: int | None, quantizer_ef: int):
    ivf = faiss.SearchParametersIVF(nprobe=nprobe)
    if quantizer_ef > 0 and isinstance(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer), faiss.IndexHNSW):
        ivf.quantizer_params = faiss.SearchParametersHNSW(efSearch=quantizer_ef)
    if isinstance(index, faiss.IndexRefine):
        return faiss.IndexRefineSearchParameters(k_factor=float(k_factor or 1), base_index_params=ivf)
    return ivf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", default="600", help="HNSW efSearch values for the bundle's index (if it is HNSW)")
    ap.add_argument("--ivf", action="append", default=[], help="an IVF index file over the bundle's item vectors")
    ap.add_argument("--factory", action="append", default=[], help="a FAISS index_factory string to build and measure")
    ap.add_argument("--kind", action="append", default=[], choices=KINDS,
                    help="a retrieval/index.py kind to build (the bundle's params)")
    ap.add_argument("--nprobe", default="32,64,96", help="nprobe values for --ivf and --factory indexes")
    ap.add_argument("--k-factor", default="2", help="refine k_factor values for --factory indexes with a refine stage")
    ap.add_argument("--quantizer-ef", type=int, default=0, help="efSearch of an HNSW coarse quantizer (0: FAISS's)")
    ap.add_argument("--no-bundle", action="store_true", help="skip the bundle's own index")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time every index this many times, interleaved (order reversed every other round); "
                         "CPU = the median round")
    ap.add_argument("--k", default="", help="comma-separated k values to time (default: the serving k; at most it)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    nprobes, k_factors = _ints(args.nprobe), _ints(args.k_factor)
    if args.rounds < 1 or args.queries < 1:
        raise SystemExit("--rounds and --queries must be >= 1")
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
    scores, truth = exact.search(q, k)
    del exact
    build_threads = os.cpu_count() or 1  # the Recommender set faiss to one thread
    faiss.omp_set_num_threads(1)
    pool = rec._newest(None, None, now, max(p.fresh_hours, p.followed_hours) * 3600.0, PRIOR_POOL_MAX)
    live = rec._live_items(now)

    def served(ids: np.ndarray, u: np.ndarray) -> set[int]:
        if prior is None:
            return set(ids[: p.ann_k].tolist())
        got, _ = rec._prior_pool(prior, now).top(prior, u, ids, x, pub, now, p.ann_k, clicks=rec.state.item_clicks)
        return set(got.tolist())

    want = [served(truth[i], q[i]) for i in range(len(q))]
    top = np.median(scores[:, [0, min(99, k - 1), k - 1]], axis=0)
    print(f"{args.model}: {len(x):,} items x {x.shape[1]}-d (|mean item vector| {np.linalg.norm(x.mean(0)):.3f}), "
          f"k = {k}, {len(q)} queries (median exact score at ranks 1 / 100 / {k}: {top[0]:.4f} / {top[1]:.4f} / "
          f"{top[2]:.4f}), newest pool {len(pool)}, live {'all' if live is None else f'{len(live):,}'}, "
          f"search threads 1, build threads {build_threads}", flush=True)
    searchers: list[tuple[str, Callable[[np.ndarray, int], np.ndarray], dict]] = []

    def built(what: str, make: Callable[[], object], raw: Callable[[object], faiss.Index]):
        faiss.omp_set_num_threads(build_threads)
        t, c = time.perf_counter(), time.process_time()
        index = make()
        info = {"build_s": round(time.perf_counter() - t, 1), "build_cpu_s": round(time.process_time() - c, 1),
                "bytes": int(faiss.serialize_index(raw(index)).nbytes)}
        faiss.omp_set_num_threads(1)
        print(f"{what}: built in {info['build_s']} s ({info['build_cpu_s']} s CPU), {info['bytes'] / 1e6:.1f} MB", flush=True)
        return index, info

    if not args.no_bundle:
        size = {"bytes": int(faiss.serialize_index(art.index.index).nbytes)}
        if art.index.kind == "hnsw":
            for ef in _ints(args.ef):
                searchers.append((f"bundle hnsw efSearch max({ef}, k)", lambda v, kk, ef=ef: art.index.index.search(
                    v, kk, params=faiss.SearchParametersHNSW(efSearch=max(ef, kk)))[1], size))
        searchers.append((f"bundle {art.index.kind} as served (live filter)",
                          lambda v, kk: art.index.search(v, kk, allowed=live)[1], size))
    for path in args.ivf:
        index = faiss.read_index(path)
        for nprobe in nprobes:
            prm = faiss.SearchParametersIVF(nprobe=nprobe)
            searchers.append((f"{Path(path).parent.name}/{Path(path).name} nprobe {nprobe}",
                              lambda v, kk, prm=prm, index=index: index.search(v, kk, params=prm)[1],
                              {"bytes": int(faiss.serialize_index(index).nbytes), "nprobe": nprobe}))
    for spec in args.factory:
        index, info = built(spec, lambda spec=spec: build_factory(spec, x), lambda ix: ix)
        for nprobe in nprobes:
            for kf in (k_factors if isinstance(index, faiss.IndexRefine) else [None]):
                prm = _search_params(index, nprobe, kf, args.quantizer_ef)
                searchers.append((f"{spec} nprobe {nprobe}" + (f" k_factor {kf}" if kf else ""),
                                  lambda v, kk, prm=prm, index=index: index.search(v, kk, params=prm)[1],
                                  {**info, "nprobe": nprobe, "k_factor": kf}))
    for kind in args.kind:
        ix, info = built(f"kind {kind}", lambda kind=kind: build_index(x, kind, params=IndexParams.from_config(
            art.cfg.retrieval)), lambda fi: fi.index)
        searchers.append((f"kind {kind} as served (live filter)", lambda v, kk, ix=ix: ix.search(v, kk, allowed=live)[1], info))
    ks = _ints(args.k) if args.k else [k]
    rows: list[dict] = []
    for kk in ks:
        if not 1 <= kk <= k:
            raise SystemExit(f"--k {kk}: between 1 and the serving k ({k})")
        cpu: dict[int, list[float]] = {j: [] for j in range(len(searchers))}
        lat: dict[int, list[float]] = {j: [] for j in range(len(searchers))}
        got: dict[int, list[np.ndarray]] = {}
        for r in range(args.rounds):  # interleaved, the order reversed every other round
            for j in (range(len(searchers)) if r % 2 == 0 else reversed(range(len(searchers)))):
                search = searchers[j][1]
                search(q[:1], kk)  # first-call costs (lazy tables) are not a query's
                out = []
                c0 = time.process_time()
                for i in range(len(q)):
                    t = time.thread_time_ns()
                    out.append(search(q[i:i + 1], kk)[0])
                    lat[j].append((time.thread_time_ns() - t) / 1e6)
                cpu[j].append(1000.0 * (time.process_time() - c0) / len(q))
                got.setdefault(j, out)
        for j, (name, _, extra) in enumerate(searchers):
            g = got[j]
            r_k = np.mean([len(set(a.tolist()) & set(t[:kk].tolist())) / kk for a, t in zip(g, truth)])
            r_100 = (np.mean([len(set(a[:100].tolist()) & set(t[:100].tolist())) / 100 for a, t in zip(g, truth)])
                     if kk >= 100 else float("nan"))  # fewer hits than 100: no recall@100
            sv = np.mean([len(served(a[a >= 0], q[i]) & want[i]) / max(len(want[i]), 1) for i, a in enumerate(g)])
            row = {"index": name, "k": kk, "cpu_ms": round(float(np.median(cpu[j])), 3),
                   "cpu_ms_rounds": [round(v, 3) for v in cpu[j]],
                   "cpu_p50_ms": round(float(np.percentile(lat[j], 50)), 3),
                   "cpu_p99_ms": round(float(np.percentile(lat[j], 99)), 3), "recall@k": round(float(r_k), 4),
                   "recall@100": round(float(r_100), 4) if kk >= 100 else None,
                   "served_overlap": round(float(sv), 4), **extra}
            rows.append(row)
            rounds = f" rounds {'/'.join(f'{v:.3f}' for v in cpu[j])}" if args.rounds > 1 else ""
            print(f"{name:52s} k {kk:4d}  cpu {row['cpu_ms']:.3f} ms/query{rounds} (p50 {row['cpu_p50_ms']:.3f}, "
                  f"p99 {row['cpu_p99_ms']:.3f})  recall@{kk} {r_k:.4f}  recall@100 {r_100:.4f}  "
                  f"served overlap {sv:.4f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "items": len(x), "dim": int(x.shape[1]), "k": k,
                                         "queries": len(q), "rounds": args.rounds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
