"""How cost grows with the world: serving memory, index build time, training examples/s
(1 and 2 processes) and feed p99, for synthetic worlds of growing size.

    result = run_scale_bench([10_000, 100_000], Path("var/bench/scale"), say=print)

For each point (users, items) it:

1. builds (or reuses) a synthetic world and a model under ``workdir`` (the same recipe
   as ``feedrank bench serve``: 2 days, 1 epoch per model);
2. times ``build_index`` on the model's item vectors (the kind ``retrieval.index=auto``
   picks for that many items), best of ``index_repeats``;
3. in a fresh process (``python -m feedrank.bench.scale serve``): RSS after imports,
   RSS with the loaded serving stack (``build_service``: Recommender, state, index, app),
   and in-process feed latency p50/p99 over ``feed_requests`` requests (one torch thread);
4. trains the two-tower on the world's train clicks (capped at ``train_examples``), one
   torch thread per process, with 1 process and with 2 processes
   (``python -m feedrank.bench.scale train``): a short calibration run (also the warm-up),
   then as many epochs as last at least ``train_seconds`` at the calibrated speed;
   examples/s over that run (all ranks), and for rank 0 the shares of the loop spent in
   the gradient exchange and waiting for the other rank, and the compute per step.

Memory and time are measured, never estimated; a step that fails is recorded with its
error and the others still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from feedrank.serving.server import free_port

DAYS = 2
ACTIVITY = 0.15
MIN_TRAIN_SECONDS = 20.0  # steady-state seconds of each training measurement (after the calibration run)
CALIBRATION_SECONDS = 3.0  # the calibration run (warm-up) lasts at least this long


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def points_for(sizes: list[int], vary: str, base: int) -> list[tuple[int, int]]:
    """(users, items) points: ``both`` -> (n, n); ``items`` -> (base, n); ``users`` -> (n, base)."""
    if vary == "both":
        return [(n, n) for n in sizes]
    if vary == "items":
        return [(base, n) for n in sizes]
    if vary == "users":
        return [(n, base) for n in sizes]
    raise ValueError(f"vary must be both, items or users, got {vary!r}")


def time_index_build(model_dir: Path, repeats: int = 1) -> dict[str, Any]:
    """Seconds to build the serving ANN index over the bundle's item vectors (best of ``repeats``)."""
    from feedrank.config import load_config
    from feedrank.retrieval.index import IndexParams, build_index

    cfg = load_config(None, [])
    vectors = np.load(model_dir / "item_vectors.npy")
    best, kind = float("inf"), ""
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        index = build_index(vectors, cfg.retrieval.index, seed=0, params=IndexParams.from_config(cfg.retrieval))
        best = min(best, time.perf_counter() - t)
        kind = index.kind
    return {"seconds": round(best, 4), "kind": kind, "n_vectors": int(len(vectors)), "dim": int(vectors.shape[1])}


def _run_json(cmd: list[str], out: Path, timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(out.read_text())


def measure_serving(model_dir: Path, requests: int, timeout_s: float = 1800.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "serve.json"
        cmd = [sys.executable, "-m", "feedrank.bench.scale", "serve", "--model", str(model_dir),
               "--requests", str(requests), "--out", str(out), "--events", str(Path(tmp) / "events")]
        return _run_json(cmd, out, timeout_s)


def measure_training(world: Path, nproc: int, max_examples: int, min_seconds: float = MIN_TRAIN_SECONDS,
                     timeout_s: float = 3600.0) -> dict[str, Any]:
    """The training probe with ``nproc`` processes (rank 0's JSON). The ranks are started
    here with torchrun's variables rather than by torchrun: torchrun puts every worker in a
    new session, and with the kernel's scheduler autogroups (on by default) a new session
    escapes the caller's ``nice``, so 1 and 2 processes would not run at the same priority."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "train.json"
        cmd = [sys.executable, "-m", "feedrank.bench.scale", "train", "--data", str(world), "--max-examples",
               str(max_examples), "--min-seconds", str(min_seconds), "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if nproc == 1:
            return _run_json(cmd, out, timeout_s, env)
        port = free_port()
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={
            **env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(nproc)]
        errors = []
        try:
            for r, p in enumerate(procs):
                _, err = p.communicate(timeout=timeout_s)
                if p.returncode != 0:
                    errors.append(f"rank {r} exit {p.returncode}: {err[-1500:]}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if errors or not out.exists():
            raise RuntimeError(f"training probe with {nproc} processes failed: {' | '.join(errors) or 'no result'}")
        return json.loads(out.read_text())


def run_scale_bench(sizes: list[int], workdir: Path, vary: str = "both", base: int = 10_000, procs: tuple[int, ...] = (1, 2),
                    train_examples: int = 100_000, feed_requests: int = 300, index_repeats: int = 1,
                    train_seconds: float = MIN_TRAIN_SECONDS, say: Callable[[str], None] = print) -> dict[str, Any]:
    from feedrank.bench.serve import ensure_model

    rows: list[dict[str, Any]] = []
    for users, items in points_for(sizes, vary, base):
        row: dict[str, Any] = {"users": users, "items": items, "days": DAYS, "activity": ACTIVITY}
        size_dir = workdir / f"u{users}-i{items}-d{DAYS}"
        t = time.perf_counter()
        try:
            model = ensure_model(size_dir, users, items, DAYS, ACTIVITY, say)
        except Exception as exc:  # noqa: BLE001 - recorded; the other sizes still run
            row["error"] = f"building the world/model failed: {type(exc).__name__}: {str(exc)[-600:]}"
            say(f"u{users} i{items}: {row['error']}")
            rows.append(row)
            continue
        row["build_seconds"] = round(time.perf_counter() - t, 1)
        manifest = json.loads((model / "manifest.json").read_text())
        row["events"] = (manifest.get("dataset") or {}).get("n_events")
        for name, fn in (("index_build", lambda: time_index_build(model, index_repeats)),
                         ("serving", lambda: measure_serving(model, feed_requests))):
            try:
                row[name] = fn()
            except Exception as exc:  # noqa: BLE001 - recorded, the other measurements still run
                row[name] = {"error": str(exc)[-800:]}
            say(f"u{users} i{items}: {name} {row[name]}")
        row["training"] = {}
        for p in procs:
            try:
                row["training"][str(p)] = measure_training(size_dir / "world", p, train_examples, train_seconds)
            except Exception as exc:  # noqa: BLE001
                row["training"][str(p)] = {"error": str(exc)[-800:]}
            say(f"u{users} i{items}: training {p} proc {row['training'][str(p)]}")
        one, two = row["training"].get("1", {}), row["training"].get("2", {})
        if one.get("examples_per_s") and two.get("examples_per_s"):
            row["training"]["speedup_2_vs_1"] = round(two["examples_per_s"] / one["examples_per_s"], 3)
        rows.append(row)
    return {"points": rows, "vary": vary, "procs": list(procs), "threads_per_process": 1,
            "train_examples_cap": train_examples, "train_seconds": train_seconds, "feed_requests": feed_requests,
            "note": ("training: two-tower, one torch thread per process, local batch retrieval.batch_size (or the "
                     "process's share of the clicks if smaller); after a calibration run (warm-up) of >= "
                     f"{CALIBRATION_SECONDS:g} s, as many epochs as last >= train_seconds; comm_share = time in the "
                     "gradient exchange (waiting excluded) / epoch-loop time (rank 0), wait_share = estimated time "
                     "waiting for the other rank / loop time, compute_ms_per_step = (loop - exchange) / steps, "
                     "cpu_ms_per_step = process CPU time (all threads) in the loop / steps")}


# ---------------------------------------------------------------------------------------
# the probes, each run in a fresh process


def _probe_serve(model: str, requests: int, events: str, out: str) -> None:
    import torch

    from feedrank.serving.factory import build_service
    from feedrank.types import FeedRequest

    torch.set_num_threads(1)
    rss_before = _rss_mib()
    t = time.perf_counter()
    _app, event_log, rec, _cfg = build_service(model, events)
    load_s = time.perf_counter() - t
    rss_loaded = _rss_mib()
    rng = np.random.default_rng(0)
    known = rec.art.snapshot.user_ids
    picks = rng.integers(0, max(len(known), 1), requests)
    users = [str(known[i]) if len(known) and rng.random() < 0.9 else f"new-{i}" for i in picks]
    for u in users[: min(20, len(users))]:  # warm-up
        rec.recommend(FeedRequest(user_id=u, k=20, deadline_ms=10_000.0))
    lat = []
    for u in users:
        t = time.perf_counter()
        rec.recommend(FeedRequest(user_id=u, k=20, deadline_ms=10_000.0))
        lat.append((time.perf_counter() - t) * 1000.0)
    event_log.close()
    a = np.asarray(lat)
    Path(out).write_text(json.dumps({
        "rss_mib_after_imports": round(rss_before, 1), "rss_mib_loaded": round(rss_loaded, 1),
        "serving_memory_mib": round(rss_loaded - rss_before, 1), "load_seconds": round(load_s, 2),
        "feed_ms": {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
                    "requests": len(lat)}}))


def _probe_train(data: str, max_examples: int, min_seconds: float, out: str) -> None:
    """Two-tower training speed (rank 0 writes ``out``). A calibration run of at least
    ``CALIBRATION_SECONDS`` (doubling its epochs until it lasts that long) warms up the
    process, the allocator and the process group and gives the speed; the measured run then
    takes as many epochs as last 1.1 x ``min_seconds`` at that speed (rank 0's figure, shared
    so every rank runs the same epochs), and is redone at its own speed if it lasted less
    than ``min_seconds``."""
    from feedrank.bench.train_inputs import load_train_inputs
    from feedrank.retrieval.train import train_two_tower
    from feedrank.training import distributed as dist

    info = dist.init_from_env()
    try:
        inputs = load_train_inputs(data, ["retrieval.epochs=1", f"retrieval.max_train_examples={max_examples}"])
        cfg = inputs.cfg

        def run(epochs: int):
            rcfg = dataclasses.replace(cfg.retrieval, epochs=epochs)
            return rcfg, train_two_tower(rcfg, inputs.catalog, inputs.clicks, inputs.n_category, inputs.n_subcategory,
                                         inputs.rng, show_progress=False, content=inputs.content)[1]

        epochs = 1
        while True:  # calibration = warm-up
            _, cal = run(epochs)
            if dist.broadcast_int(int(cal.train_seconds >= CALIBRATION_SECONDS or epochs >= 4096)):
                break
            epochs *= 2
        per_epoch_s = dist.broadcast_int(int(1e6 * cal.train_seconds / epochs)) / 1e6
        for _ in range(3):  # the calibration ran slower (warm-up): rerun if the measured run fell short
            rcfg, rep = run(max(1, math.ceil(1.1 * min_seconds / max(per_epoch_s, 1e-6))))
            if dist.broadcast_int(int(rep.train_seconds >= min_seconds)):
                break
            per_epoch_s = dist.broadcast_int(int(1e6 * rep.train_seconds / rcfg.epochs)) / 1e6
        if info.rank == 0:
            loop = rep.train_seconds
            exchange = rep.comm_seconds + rep.wait_seconds
            Path(out).write_text(json.dumps({
                "processes": info.world_size, "examples": rep.examples, "epochs": rcfg.epochs, "steps": rep.steps,
                "examples_per_s": round(rep.examples_per_s, 1),
                "loop_seconds": round(loop, 3), "calibration_seconds": round(cal.train_seconds, 3),
                "comm_seconds_rank0": round(rep.comm_seconds, 3),
                "comm_share": round(rep.comm_seconds / loop, 4) if loop else None,
                "wait_seconds_rank0": round(rep.wait_seconds, 3),
                "wait_share": round(rep.wait_seconds / loop, 4) if loop else None,
                "compute_ms_per_step_rank0": round(1000 * (loop - exchange) / rep.steps, 2) if rep.steps else None,
                # process CPU per step (all threads; spinning in the exchange counts): less sensitive
                # to other jobs' load than wall time
                "cpu_ms_per_step_rank0": round(1000 * rep.train_cpu_seconds / rep.steps, 2) if rep.steps else None,
                "batch_per_process": min(cfg.retrieval.batch_size, rep.examples // info.world_size)}))
    finally:
        dist.shutdown()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m feedrank.bench.scale", description="scale benchmark probes")
    sub = ap.add_subparsers(dest="probe", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--model", required=True)
    s.add_argument("--requests", type=int, default=300)
    s.add_argument("--events", required=True)
    s.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--max-examples", type=int, default=100_000)
    t.add_argument("--min-seconds", type=float, default=MIN_TRAIN_SECONDS)
    t.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.probe == "serve":
        _probe_serve(a.model, a.requests, a.events, a.out)
    else:
        _probe_train(a.data, a.max_examples, a.min_seconds, a.out)


if __name__ == "__main__":
    main()
