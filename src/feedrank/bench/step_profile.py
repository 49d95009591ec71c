"""Where a two-tower training step's time goes, with 1 or more processes.

    python -m feedrank.bench.step_profile --data var/bench/scale/u100000-i100000-d2/world
    python -m feedrank.bench.step_profile --data var/bench/scale/u100000-i100000-d2/world --nproc 2
    python -m feedrank.bench.step_profile --data var/world --nproc 2 --batch 1024 --steps 200
    python -m feedrank.bench.step_profile --data var/world --sparse-optimizer torch   # torch.optim.SparseAdam

Runs the two-tower recipe's step (``retrieval/train.py`` with its defaults: in-batch
softmax with logQ, no hard negatives; the same model, optimizers, tower calls and gradient
exchange) with a timer around each piece, after ``--warmup`` untimed steps, and prints one
JSON line per rank (milliseconds per step): data (slice and collate), forward, backward,
exchange (``average_gradients``, waiting excluded), wait (estimated waiting for the other
rank), dense Adam, SparseAdam (the recipe's ``RowSparseAdam``, or torch's with
``--sparse-optimizer torch``: the same results), plus the CPU and run-queue milliseconds per step of the
process (``/proc/self/task/*/schedstat``: time runnable but not running = preempted by
other work) and the sparse rows per step and rank. ``--nproc N`` starts N ranks in this
session (like ``feedrank bench scale``'s probe), one torch thread each.

It is a measuring copy of the recipe's inner loop, not the recipe: use
``python -m feedrank.bench.scale train`` (``feedrank bench scale``) for examples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _schedstat() -> tuple[int, int]:
    """(ns on CPU, ns runnable but waiting) summed over this process's threads."""
    run = wait = 0
    for t in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{t}/schedstat").read_text().split()
        except OSError:
            continue
        run, wait = run + int(fields[0]), wait + int(fields[1])
    return run, wait


def profile(data: str, steps: int, warmup: int, batch: int, sparse_opt: str = "row") -> dict:
    import torch
    import torch.nn.functional as F

    from feedrank.bench.train_inputs import load_train_inputs
    from feedrank.retrieval.encode import item_vectors_of, user_vectors
    from feedrank.retrieval.train import two_tower_dims
    from feedrank.retrieval.two_tower import build_two_tower
    from feedrank.training import distributed as dist
    from feedrank.training.sparse_adam import RowSparseAdam

    inputs = load_train_inputs(data, [f"retrieval.batch_size={batch}"] if batch else [])
    rc, catalog, clicks, content = inputs.cfg.retrieval, inputs.catalog, inputs.clicks, inputs.content
    users, pos, ts = clicks.user_codes, clicks.items, clicks.ts
    hist = clicks.histories(users, ts, rc.history_len)
    freq = np.bincount(pos, minlength=len(catalog)).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(freq, 1.0) / len(pos)).astype(np.float32))
    model = build_two_tower(two_tower_dims(rc, inputs.n_category, inputs.n_subcategory,
                                           0 if content is None else content.shape[1]))
    model.set_content(content)
    opt_dense = torch.optim.Adam(model.dense_parameters(), lr=rc.lr)
    opt_sparse = (torch.optim.SparseAdam if sparse_opt == "torch" else RowSparseAdam)(model.sparse_parameters(), lr=rc.lr)
    dense, sparse = model.dense_parameters(), model.sparse_parameters()
    world, rank = dist.world_size(), dist.rank()
    n_local = len(pos) // world
    bs = min(rc.batch_size, n_local)
    if bs < 2:
        raise ValueError(f"{len(pos)} training clicks are too few for {world} processes")
    per_epoch = n_local // bs
    timer = dist.CommTimer()
    names = ("data", "forward", "backward", "dense_adam", "sparse_adam")
    acc = dict.fromkeys(names, 0.0)
    rows = np.zeros(len(sparse))
    order = np.arange(0)
    t_start, sched0, comm0, wait0 = time.perf_counter(), _schedstat(), 0.0, 0.0
    for it in range(warmup + steps):
        if it == warmup:
            acc = dict.fromkeys(names, 0.0)
            rows[:] = 0
            t_start, sched0, comm0, wait0 = time.perf_counter(), _schedstat(), timer.comm_s, timer.wait_s
        step = it % per_epoch
        t0 = time.perf_counter()
        if step == 0:
            order = dist.shard(np.random.default_rng([0, it // per_epoch]).permutation(len(pos)))
        b = order[step * bs : (step + 1) * bs]
        items_b, hist_b, ts_b = pos[b], hist[b], ts[b]
        t1 = time.perf_counter()
        u, _ = user_vectors(model, catalog, hist_b, ts_b)
        v = item_vectors_of(model, catalog, items_b)
        logits = u @ v.T / rc.temperature - log_q[torch.from_numpy(items_b)][None, :]
        same = torch.from_numpy(items_b[:, None] == items_b[None, :])
        same.fill_diagonal_(False)
        loss = F.cross_entropy(logits.masked_fill(same, -1e9), torch.arange(len(b)))
        t2 = time.perf_counter()
        opt_dense.zero_grad(set_to_none=True)
        opt_sparse.zero_grad(set_to_none=True)
        loss.backward()
        loss_v = loss.item()
        t3 = time.perf_counter()
        if it >= warmup:
            rows += [0 if p.grad is None else p.grad.coalesce().indices().shape[1] for p in sparse]
        t3b = time.perf_counter()  # the row count above is not part of the step
        if world > 1:
            dist.average_gradients(dense, sparse, torch.tensor([loss_v, 0.0]), timer)
        t4 = time.perf_counter()
        opt_dense.step()
        t5 = time.perf_counter()
        opt_sparse.step()
        t6 = time.perf_counter()
        for k, (a, z) in zip(names, ((t0, t1), (t1, t2), (t2, t3), (t4, t5), (t5, t6))):
            acc[k] += z - a
        t_start += t3b - t3
    total = time.perf_counter() - t_start
    sched1 = _schedstat()
    ms = lambda s: round(1000 * s / steps, 2)  # noqa: E731
    return {"rank": rank, "processes": world, "batch_per_process": bs, "steps": steps, "sparse_optimizer": sparse_opt,
            "examples_per_s": round(steps * bs * world / total), "step_ms": ms(total),
            **{k: ms(v) for k, v in acc.items()},
            "exchange": ms(timer.comm_s - comm0), "wait": ms(timer.wait_s - wait0),
            "cpu_ms": round((sched1[0] - sched0[0]) / 1e6 / steps, 2),
            "runqueue_ms": round((sched1[1] - sched0[1]) / 1e6 / steps, 2),
            "sparse_rows": [int(r / steps) for r in rows]}


def _launch(argv: list[str], nproc: int) -> int:
    from feedrank.serving.server import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    cmd = [sys.executable, "-m", "feedrank.bench.step_profile", *argv, "--nproc", "1"]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(nproc)]
    return max(abs(p.wait()) for p in procs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m feedrank.bench.step_profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a world folder (events, items, users)")
    ap.add_argument("--nproc", type=int, default=1, help="processes (ranks), one torch thread each")
    ap.add_argument("--steps", type=int, default=400, help="timed steps")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=0, help="local batch (0: retrieval.batch_size)")
    ap.add_argument("--sparse-optimizer", choices=("row", "torch"), default="row",
                    help="row: the recipe's RowSparseAdam (default); torch: torch.optim.SparseAdam (same results)")
    a = ap.parse_args(argv)
    if a.nproc < 1 or a.steps < 1 or a.warmup < 0 or a.batch < 0:
        ap.error("--nproc and --steps must be >= 1, --warmup and --batch >= 0")
    if a.nproc > 1:
        sys.exit(_launch(["--data", a.data, "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch),
                          "--sparse-optimizer", a.sparse_optimizer], a.nproc))
    from feedrank.training import distributed as dist

    dist.init_from_env()
    try:
        print(json.dumps(profile(a.data, a.steps, a.warmup, a.batch, a.sparse_optimizer)), flush=True)
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
