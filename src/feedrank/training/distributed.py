"""torch.distributed for the recipes: process-group setup from ``torchrun``'s environment,
rank helpers, gradient averaging (dense and sparse) and metric reduction.

    info = init_from_env()          # no-op (world size 1) outside torchrun
    ...
    seconds = average_gradients(dense_params, sparse_params, extras)
    ...
    shutdown()

Data parallelism here is explicit rather than ``DistributedDataParallel``: the recipes
call tower methods (not one ``forward``) and the two-tower's hashed tables have sparse
gradients, which DDP's bucketed reducer handles poorly. After ``backward`` every rank
calls ``average_gradients``: one all-reduce of all dense gradients flattened into a single
buffer (plus the step's loss and counters, so every rank logs the same metrics), and one
all-gather of the sparse rows (indices and values of every sparse table, concatenated),
summed and divided by the world size. The result is what DDP computes (the mean gradient
over the global batch) and is bitwise identical on every rank. ``CommTimer`` records the
seconds spent in these collectives (the communication share of a step).

Backend: gloo (CPU tensors; the recipes train on CPU). ``FEEDRANK_DIST_BACKEND=nccl``
selects NCCL, which needs the recipe's tensors on the GPU (not done by the CPU recipes).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str  # "" when not distributed


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return default if v in (None, "") else int(v)


def init_from_env(timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT). World size 1 or no variables: nothing to join."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo(0, 1, 0, "")
    if not tdist.is_initialized():
        backend = os.environ.get("FEEDRANK_DIST_BACKEND", "gloo")
        timeout = timedelta(seconds=timeout_s)
        rank_ = _env_int("RANK", 0)
        # torchrun's agent keeps one TCPStore across worker restarts: without a per-attempt
        # prefix a restarted rank reads the dead workers' addresses and the mesh never forms
        use_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        store = tdist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT", 29500), world,
                               is_master=not use_agent and rank_ == 0, timeout=timeout)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = tdist.PrefixStore(f"feedrank/attempt_{attempt}", store)
        tdist.init_process_group(backend=backend, store=store, rank=rank_, world_size=world, timeout=timeout)
    return info()


def info() -> DistInfo:
    if not (tdist.is_available() and tdist.is_initialized()):
        return DistInfo(0, 1, 0, "")
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), _env_int("LOCAL_RANK", 0), tdist.get_backend())


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def broadcast_int(value: int, src: int = 0) -> int:
    """``value`` as rank ``src`` has it (e.g. a seed every rank must share)."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    tdist.broadcast(t, src)
    return int(t.item())


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (in place)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, src)


def all_reduce_mean(values: list[float]) -> list[float]:
    """Element-wise mean of ``values`` over ranks (float64)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64)
    tdist.all_reduce(t)
    return (t / world_size()).tolist()


class CommTimer:
    """Seconds spent in ``average_gradients``: ``wait_s`` at the barrier that opens it
    (waiting for the slowest rank: load imbalance, a busy core) and ``comm_s`` in the
    collectives themselves (moving and summing gradients)."""

    def __init__(self) -> None:
        self.comm_s = 0.0
        self.wait_s = 0.0
        self.steps = 0

    def share(self, total_s: float) -> float:
        return self.comm_s / total_s if total_s > 0 else 0.0


def shard(indices, n_ranks: int | None = None, rank_: int | None = None):
    """This rank's disjoint share of ``indices`` (strided: ``indices[rank::world]``)."""
    w = world_size() if n_ranks is None else n_ranks
    r = rank() if rank_ is None else rank_
    return indices[r::w]


def average_gradients(dense: list[torch.nn.Parameter], sparse: list[torch.nn.Parameter],
                      extras: torch.Tensor | None = None, timer: CommTimer | None = None) -> torch.Tensor | None:
    """Replace every gradient by its mean over ranks; return ``extras`` (K,) averaged too.

    dense: parameters with dense gradients (None counts as zero; stays None if no rank has one); sparse: parameters
    with sparse COO gradients of shape (rows, D) sharing D. World size 1: no-op."""
    if not is_distributed():
        return extras
    if timer is not None:  # separate waiting for the slowest rank from moving the data
        tw = time.perf_counter()
        tdist.barrier()
        timer.wait_s += time.perf_counter() - tw
        timer.steps += 1
    t0 = time.perf_counter()
    w = float(world_size())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense]
    # one flag per parameter: how many ranks produced a gradient for it this step
    used = torch.tensor([float(p.grad is not None) for p in dense])
    n_extra = 0 if extras is None else extras.numel()
    flat = torch.cat([g.reshape(-1) for g in grads] + ([extras.reshape(-1).float()] if extras is not None else []) + [used])
    tdist.all_reduce(flat)
    used = flat[len(flat) - len(dense):]
    flat = flat[: len(flat) - len(dense)] / w
    off = 0
    for p, g, u in zip(dense, grads, used.tolist()):
        n = g.numel()
        # a parameter no rank touched keeps no gradient, as in one process (the optimizer skips it)
        p.grad = flat[off : off + n].view_as(p) if u > 0 else None
        off += n
    out = flat[off : off + n_extra] if extras is not None else None
    if sparse:
        _average_sparse(sparse, w)
    if timer is not None:
        timer.comm_s += time.perf_counter() - t0
    return out


def _average_sparse(params: list[torch.nn.Parameter], w: float) -> None:
    """All-gather the rows of every sparse gradient (all tables in one buffer), / w.

    Each rank coalesces its own gradients (fewer rows to send), sends one index and one
    value buffer plus its per-table row counts, and rebuilds each table's gradient from
    every rank's slice in rank order, so the result is the same on every rank. The merged
    gradient is left uncoalesced: SparseAdam coalesces (sums duplicate rows) itself."""
    dim = params[0].shape[1]
    idx_parts, val_parts, counts = [], [], []
    for p in params:
        if p.grad is None:
            counts.append(0)
            continue
        g = p.grad.coalesce()
        idx_parts.append(g.indices()[0])
        val_parts.append(g.values().reshape(-1, dim))
        counts.append(len(idx_parts[-1]))
    idx = torch.cat(idx_parts) if idx_parts else torch.zeros(0, dtype=torch.int64)
    val = torch.cat(val_parts) if val_parts else torch.zeros((0, dim))
    n_ranks = world_size()
    all_counts = [torch.zeros(len(params), dtype=torch.int64) for _ in range(n_ranks)]
    tdist.all_gather(all_counts, torch.tensor(counts, dtype=torch.int64))
    m = int(max(int(c.sum()) for c in all_counts))
    pad_idx = torch.zeros(m, dtype=torch.int64)
    pad_idx[: len(idx)] = idx
    pad_val = torch.zeros((m, dim), dtype=val.dtype)
    pad_val[: len(val)] = val
    all_idx = [torch.empty_like(pad_idx) for _ in range(n_ranks)]
    all_val = [torch.empty_like(pad_val) for _ in range(n_ranks)]
    tdist.all_gather(all_idx, pad_idx)
    tdist.all_gather(all_val, pad_val)
    starts = [torch.cumsum(c, 0) - c for c in all_counts]
    for k, p in enumerate(params):
        pieces = [(int(starts[r][k]), int(all_counts[r][k])) for r in range(n_ranks)]
        if not any(n for _, n in pieces):
            p.grad = None
            continue
        gi = torch.cat([all_idx[r][a : a + n] for r, (a, n) in enumerate(pieces)])
        gv = torch.cat([all_val[r][a : a + n] for r, (a, n) in enumerate(pieces)]) / w
        p.grad = torch.sparse_coo_tensor(gi[None, :], gv, p.shape, check_invariants=False)
