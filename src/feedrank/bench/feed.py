"""End-to-end feed latency: the Recommender in process, per stage, and over HTTP.

    feedrank bench feed --model var/demo/full/model --requests 2000 --json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from feedrank.types import FeedRequest


def _pcts(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "mean": round(float(a.mean()), 3)}


def run_feed_bench(model_dir: str | Path, requests: int = 2000, k: int = 20, http: bool = True, seed: int = 0,
                   say: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample users (90% known, 10% unknown), request feeds, report latency percentiles (ms)."""
    import httpx

    from feedrank.serving.factory import build_service
    from feedrank.serving.server import BackgroundServer, free_port

    app, event_log, rec, cfg = build_service(str(model_dir), str(Path(model_dir).parent / "bench-events"))
    rng = np.random.default_rng(seed)
    known = rec.art.snapshot.user_ids
    users = [str(known[i]) if rng.random() < 0.9 and len(known) else f"new-{i}" for i in rng.integers(0, max(len(known), 1), requests)]
    out: dict[str, Any] = {"model_version": rec.model_version, "n_items": len(rec.catalog), "requests": requests, "k": k,
                           "candidates": cfg.pipeline.rank_max_candidates}
    stages: dict[str, list[float]] = {}
    tiers: dict[str, int] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for u in users:
        resp = rec.recommend(FeedRequest(user_id=u, k=k, deadline_ms=10_000.0))
        tiers[resp.tier] = tiers.get(resp.tier, 0) + 1
        for name, ms in resp.timings_ms.items():
            stages.setdefault(name, []).append(ms)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU per request (all threads of this process): the figure to compare code changes by
    # on a busy machine, where wall-clock latency mostly measures the neighbours
    out["in_process"] = {"stages_ms": {s: _pcts(v) for s, v in stages.items()}, "tiers": tiers,
                         "requests_per_s_one_thread": round(requests / wall, 1),
                         "cpu_ms_per_request": round(1000.0 * cpu / requests, 3)}
    say(f"in-process: total p50 {out['in_process']['stages_ms']['total']['p50']} ms, p99 {out['in_process']['stages_ms']['total']['p99']} ms, "
        f"CPU {out['in_process']['cpu_ms_per_request']} ms/request")
    if http:
        server = BackgroundServer(app, "127.0.0.1", free_port()).start()
        try:
            lat = []
            with httpx.Client(base_url=server.url, timeout=30.0) as client:
                for u in users[: min(requests, 1000)]:
                    t = time.perf_counter()
                    r = client.get("/v1/feed", params={"user_id": u, "k": k})
                    lat.append((time.perf_counter() - t) * 1000.0)
                    r.raise_for_status()
            out["http_sequential"] = {"latency_ms": _pcts(lat), "requests": len(lat)}
            say(f"http (one client, sequential): p50 {out['http_sequential']['latency_ms']['p50']} ms, p99 {out['http_sequential']['latency_ms']['p99']} ms")
        finally:
            server.stop()
    event_log.close()
    return out
