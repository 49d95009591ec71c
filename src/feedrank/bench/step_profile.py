"""Where a two-tower training step's time goes, with 1 or more processes.

    python -m feedrank.bench.step_profile --data var/bench/scale/u100000-i100000-d2/world
    python -m feedrank.bench.step_profile --data var/bench/scale/u100000-i100000-d2/world --nproc 2
    python -m feedrank.bench.step_profile --data var/world --nproc 2 --batch 1024 --steps 200
    python -m feedrank.bench.step_profile --data var/world --sparse-optimizer torch   # torch.optim.SparseAdam
    python -m feedrank.bench.step_profile --data var/world --nproc 2 --independent    # 2 separate runs side by side

Runs the two-tower recipe's own step (``retrieval.train.TwoTowerStep``: the same examples,
model, optimizers, tower calls and gradient exchange as ``train_two_tower``, with its
defaults: in-batch softmax with logQ, no hard negatives) with its per-piece clock on, after
``--warmup`` untimed steps, and prints one JSON line per rank (milliseconds per step): data
(hard negatives, slicing the batch), forward (both towers, collating the catalogue inputs,
logits, loss), backward, exchange (``average_gradients``, waiting excluded), wait
(estimated waiting for the other rank), dense Adam, SparseAdam (the recipe's
``RowSparseAdam``, or torch's with ``--sparse-optimizer torch``: the same results), plus
the CPU and run-queue milliseconds per step of the process
(``/proc/self/task/*/schedstat``: time runnable but not running = preempted by other work)
and the coalesced sparse rows per step and rank (counted outside the timed pieces and
``step_ms``, but inside ``cpu_ms``: about 1 ms per step of coalescing on the 1M world).
``--nproc N`` starts N ranks in this session (like ``feedrank bench scale``'s probe), one
torch thread each; with ``--independent`` they are N separate one-process trainings (no
process group, no exchange) whose timed loops start together, to see what two busy cores
cost each other (shared L3 and memory bandwidth) apart from data parallelism. The epoch
order is drawn outside the step, as in the recipe.

For examples/s of the whole recipe use ``feedrank bench scale`` (``python -m
feedrank.bench.scale train``).
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


def schedstat() -> tuple[int, int]:
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

    from feedrank.bench.train_inputs import load_train_inputs
    from feedrank.retrieval.train import STEP_PIECES, TwoTowerExamples, TwoTowerStep, new_two_tower, two_tower_optimizers
    from feedrank.training import distributed as dist

    inputs = load_train_inputs(data, [f"retrieval.batch_size={batch}"] if batch else [])
    rc, catalog = inputs.cfg.retrieval, inputs.catalog
    ex = TwoTowerExamples.build(rc, catalog, inputs.clicks)
    model = new_two_tower(rc, inputs.n_category, inputs.n_subcategory, inputs.content)
    opt_dense, opt_sparse = two_tower_optimizers(model, rc)
    if sparse_opt == "torch":
        opt_sparse = torch.optim.SparseAdam(model.sparse_parameters(), lr=rc.lr)
    timer = dist.CommTimer()
    step_fn = TwoTowerStep(rc, model, catalog, ex, opt_dense, opt_sparse, None, timer)
    world, rank = dist.world_size(), dist.rank()
    n_local = len(ex.pos) // world
    bs = min(rc.batch_size, n_local)
    if bs < 2:
        raise ValueError(f"{len(ex.pos)} training clicks are too few for {world} processes")
    per_epoch = n_local // bs
    mined = np.full(len(ex.pos), -1, dtype=np.int64)
    order = np.arange(0)
    _start_together()
    t_start, sched0, comm0, wait0 = time.perf_counter(), schedstat(), 0.0, 0.0
    for it in range(warmup + steps):
        if it == warmup:
            step_fn.clock, step_fn.rows = {}, [0] * len(step_fn.rows)
            t_start, sched0, comm0, wait0 = time.perf_counter(), schedstat(), timer.comm_s, timer.wait_s
        step = it % per_epoch
        if step == 0:  # the recipe's epoch order (drawn once per epoch, outside the step)
            order = dist.shard(np.random.default_rng([0, it // per_epoch, 0]).permutation(len(ex.pos)))
        step_fn(order[step * bs : (step + 1) * bs], mined, np.random.default_rng([0, it, 2, rank]))
    clock = step_fn.clock or {}
    total = time.perf_counter() - t_start - clock.get("count", 0.0)  # counting the rows is not part of the step
    sched1 = schedstat()
    ms = lambda s: round(1000 * s / steps, 2)  # noqa: E731
    exchange = timer.comm_s - comm0
    return {"rank": rank, "processes": world, "batch_per_process": bs, "steps": steps, "sparse_optimizer": sparse_opt,
            "examples_per_s": round(steps * bs * world / total), "step_ms": ms(total),
            **{k: ms(clock.get(k, 0.0)) for k in STEP_PIECES if k != "exchange"},
            "exchange": ms(exchange), "wait": ms(timer.wait_s - wait0),  # the exchange's clock less the waiting
            "cpu_ms": round((sched1[0] - sched0[0]) / 1e6 / steps, 2),
            "runqueue_ms": round((sched1[1] - sched0[1]) / 1e6 / steps, 2),
            "sparse_rows": [int(r / steps) for r in step_fn.rows]}


START_BARRIER_ENV = "FEEDRANK_PROFILE_START"  # "<folder>:<parties>", set by --independent for its processes


def _start_together() -> None:
    """With --independent: wait until every process has loaded its data (a file per
    process in a shared folder), so the timed loops run side by side."""
    spec = os.environ.get(START_BARRIER_ENV, "")
    if not spec:
        return
    folder, parties = spec.rsplit(":", 1)
    (Path(folder) / str(os.getpid())).touch()
    deadline = time.monotonic() + 3600
    while len(os.listdir(folder)) < int(parties):
        if time.monotonic() > deadline:
            raise TimeoutError(f"--independent: {parties} processes did not all start within an hour")
        time.sleep(0.01)


def _launch(argv: list[str], nproc: int, independent: bool) -> int:
    import tempfile

    from feedrank.serving.server import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="feedrank-profile-") as tmp:
        if independent:  # no process group: N separate trainings that start their loops together
            env[START_BARRIER_ENV] = f"{tmp}:{nproc}"
            for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                env.pop(k, None)
            envs = [env] * nproc
        else:
            env.update({"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())})
            envs = [{**env, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(nproc)]
        cmd = [sys.executable, "-m", "feedrank.bench.step_profile", *argv, "--nproc", "1"]
        # each process's stdout apart, relayed whole when it ends: N processes printing their
        # result line into one shared pipe at the same moment could splice two lines into one
        procs = [subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, text=True) for e in envs]
        rc = 0
        for p in procs:
            out, _ = p.communicate()
            sys.stdout.write(out)
            sys.stdout.flush()
            rc = max(rc, abs(p.returncode))
        return rc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m feedrank.bench.step_profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a world folder (events, items, users)")
    ap.add_argument("--nproc", type=int, default=1, help="processes (ranks), one torch thread each")
    ap.add_argument("--steps", type=int, default=400, help="timed steps")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=0, help="local batch (0: retrieval.batch_size)")
    ap.add_argument("--independent", action="store_true",
                    help="with --nproc N: N separate single-process trainings (no process group, no exchange) "
                         "whose timed loops start together: what sharing the machine alone costs")
    ap.add_argument("--sparse-optimizer", choices=("row", "torch"), default="row",
                    help="row: the recipe's RowSparseAdam (default); torch: torch.optim.SparseAdam (same results)")
    a = ap.parse_args(argv)
    if a.nproc < 1 or a.steps < 1 or a.warmup < 0 or a.batch < 0:
        ap.error("--nproc and --steps must be >= 1, --warmup and --batch >= 0")
    if a.independent and a.nproc < 2:
        ap.error("--independent needs --nproc >= 2")
    if a.nproc > 1:
        sys.exit(_launch(["--data", a.data, "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch),
                          "--sparse-optimizer", a.sparse_optimizer], a.nproc, a.independent))
    from feedrank.training import distributed as dist

    dist.init_from_env()
    try:
        print(json.dumps(profile(a.data, a.steps, a.warmup, a.batch, a.sparse_optimizer)), flush=True)
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
