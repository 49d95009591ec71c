"""torch.distributed for the recipes: process-group setup from ``torchrun``'s environment,
rank helpers, gradient averaging (dense and sparse) and metric reduction.

    info = init_from_env()          # no-op (world size 1) outside torchrun
    ...
    timer = CommTimer()
    extras = average_gradients(dense_params, sparse_params, extras, timer)   # after backward
    ...
    shutdown()

Data parallelism here is explicit rather than ``DistributedDataParallel``: the recipes
call tower methods (not one ``forward``) and the two-tower's hashed tables have sparse
gradients, which DDP's bucketed reducer handles poorly. After ``backward`` every rank
calls ``average_gradients``: one all-gather per step of one buffer holding the dense
gradients (plus the step's loss and counters, so every rank logs the same metrics) and
the coalesced rows of every sparse table; each rank sums in rank order and divides by
the world size. The result is what DDP computes (the mean gradient over the global
batch) and is bitwise identical on every rank. ``CommTimer`` records the seconds spent
in the exchange and the estimated waiting for the slowest rank.

Backend: gloo (CPU tensors; the recipes train on CPU). ``FEEDRANK_DIST_BACKEND=nccl``
selects NCCL, which needs the recipe's tensors on the GPU (not done by the CPU recipes).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from feedrank.training.local_gather import LocalGather


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
    global _SHARED
    if _SHARED is not None and _SHARED[1] is not None:
        _SHARED[1].close()
    _SHARED = None
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
    """The gradient exchange's per-loop state: seconds spent, collectives, gloo capacity.

    ``comm_s``: seconds inside ``average_gradients`` minus the estimated waiting (packing,
    moving and summing gradients); ``wait_s``: the estimated seconds waiting for the
    slowest rank (load imbalance, a busy core). There is no barrier: every rank sends the
    seconds it worked since the previous exchange, and a rank's wait is the slowest
    rank's figure minus its own. ``collectives``: all-gathers issued. ``capacity`` and
    ``overflow_steps``: the gloo path's padded buffer size (floats, the same on every rank)
    and the steps whose longest buffer did not fit it (a second all-gather)."""

    def __init__(self) -> None:
        self.comm_s = 0.0
        self.wait_s = 0.0
        self.steps = 0
        self.collectives = 0
        self.overflow_steps = 0
        self.capacity = 0
        self._last_end: float | None = None

    def share(self, total_s: float) -> float:
        return self.comm_s / total_s if total_s > 0 else 0.0


CAPACITY_HEADROOM = 1.25  # gloo path: next step's buffer capacity = 1.25 x this step's longest buffer
CAPACITY_DECAY = 15 / 16  # ... but shrinks by at most 1/16 per step


def shard(indices, n_ranks: int | None = None, rank_: int | None = None):
    """This rank's disjoint share of ``indices`` (strided: ``indices[rank::world]``)."""
    w = world_size() if n_ranks is None else n_ranks
    r = rank() if rank_ is None else rank_
    return indices[r::w]


def average_gradients(dense: list[torch.nn.Parameter], sparse: list[torch.nn.Parameter],
                      extras: torch.Tensor | None = None, timer: CommTimer | None = None) -> torch.Tensor | None:
    """Replace every gradient by its mean over ranks; return ``extras`` (K,) averaged too.

    dense: parameters with dense gradients (None counts as zero; stays None if no rank has
    one); sparse: parameters with sparse COO gradients of shape (rows, D) sharing D. All
    float32. World size 1: no-op.

    One all-gather per step moves one float32 buffer per rank: the dense gradients,
    ``extras``, a "has a gradient" flag per dense parameter, the seconds worked since the
    last exchange, the per-table sparse row counts and the coalesced sparse rows (int32
    indices, values). Each rank then sums the dense parts in rank order and divides by the
    world size (what an all-reduce gives: the mean gradient over the global batch, as
    ``DistributedDataParallel``), and rebuilds each table's gradient from every rank's rows
    in rank order, divided by the world size and left uncoalesced (SparseAdam sums duplicate
    rows). Every rank computes the same bits. Ranks on one machine gather through shared
    memory (``training.local_gather``); otherwise gloo's all_gather (``_gather``)."""
    if not is_distributed():
        return extras
    state = timer if timer is not None else CommTimer()
    t0 = time.perf_counter()
    worked = 0.0 if state._last_end is None else t0 - state._last_end
    w, me = world_size(), rank()
    for p in (*dense, *sparse):
        if p.dtype != torch.float32:
            raise ValueError(f"average_gradients: parameters must be float32, got {p.dtype} for shape {tuple(p.shape)}")
    sizes = [p.numel() for p in dense]
    n_dense, n_extra, n_tab = sum(sizes), (0 if extras is None else extras.numel()), len(sparse)
    dim = int(sparse[0].shape[1]) if sparse else 0
    idx, val, counts = _local_rows(sparse, dim)
    n_sum = n_dense + n_extra + len(dense)  # summed over ranks
    o_worked, o_counts = n_sum, n_sum + 1
    o_idx = o_counts + n_tab
    buf = torch.empty(o_idx + len(idx) * (1 + dim))
    off = 0
    for p, n in zip(dense, sizes):
        if p.grad is not None:
            buf[off : off + n] = p.grad.reshape(-1)
        else:
            buf[off : off + n] = 0.0
        off += n
    if extras is not None:
        buf[off : off + n_extra] = extras.reshape(-1)
    buf[n_dense + n_extra : n_sum] = torch.tensor([float(p.grad is not None) for p in dense])
    buf[o_worked] = worked
    buf[o_counts:o_idx].view(torch.int32).copy_(torch.tensor(counts, dtype=torch.int32))
    buf[o_idx : o_idx + len(idx)].view(torch.int32).copy_(idx)
    buf[o_idx + len(idx) :] = val.reshape(-1)
    parts = _gather(buf, state)

    summed = parts[0][:n_sum].clone()
    for r in range(1, w):
        summed += parts[r][:n_sum]
    avg = summed[: n_dense + n_extra] / float(w)
    off = 0
    for p, n, used in zip(dense, sizes, summed[n_dense + n_extra :].tolist()):
        # a parameter no rank touched keeps no gradient, as in one process (the optimizer skips it)
        p.grad = avg[off : off + n].view_as(p) if used > 0 else None
        off += n
    out = avg[n_dense:] if extras is not None else None
    if sparse:
        all_counts = [parts[r][o_counts:o_idx].view(torch.int32).tolist() for r in range(w)]
        totals = [sum(c) for c in all_counts]
        rows_idx = [parts[r][o_idx : o_idx + totals[r]].view(torch.int32) for r in range(w)]
        rows_val = [parts[r][o_idx + totals[r] : o_idx + totals[r] * (1 + dim)].view(-1, dim) for r in range(w)]
        _set_sparse(sparse, rows_idx, rows_val, all_counts, float(w))

    end = time.perf_counter()
    slowest = max(float(parts[r][o_worked]) for r in range(w))
    wait = min(max(slowest - float(parts[me][o_worked]), 0.0), end - t0)
    state.wait_s += wait
    state.comm_s += end - t0 - wait
    state.steps += 1
    state._last_end = end
    return out


_SHARED: tuple[int, LocalGather | None] | None = None  # (process group id, shared-memory gather or None)


def _gather(buf: torch.Tensor, state: CommTimer) -> list[torch.Tensor]:
    """Every rank's ``buf`` (1-D float32, its length may differ by rank), in rank order.

    Ranks on one machine: through shared memory (set up on the first call), one tiny gloo
    collective. Otherwise gloo's all_gather, which needs equal sizes: every rank sends a
    length slot and its buffer padded to ``state.capacity`` floats, and the part of a longer
    buffer that does not fit goes in a second all_gather; the capacity is then set to 1.25x
    the longest buffer seen (shrinking by at most 1/16 per step), the same on every rank."""
    global _SHARED
    group = id(tdist.group.WORLD)
    if _SHARED is None or _SHARED[0] != group:
        _SHARED = (group, LocalGather.connect() if tdist.get_backend() == "gloo" else None)
    state.collectives += 1
    if _SHARED[1] is not None:
        return _SHARED[1].all_gather(buf)
    w, cap, n = world_size(), state.capacity, len(buf)
    send = torch.zeros(1 + cap)
    send[:1].view(torch.int32)[0] = n
    send[1 : 1 + min(n, cap)] = buf[:cap]
    heads = [torch.empty_like(send) for _ in range(w)]
    tdist.all_gather(heads, send)
    lengths = [int(h[:1].view(torch.int32)[0]) for h in heads]
    parts = [h[1 : 1 + min(length, cap)] for h, length in zip(heads, lengths)]
    most = max(lengths)
    if most > cap:  # what did not fit, in a second all_gather
        tail = torch.zeros(most - cap)
        tail[: max(n - cap, 0)] = buf[cap:]
        tails = [torch.empty_like(tail) for _ in range(w)]
        tdist.all_gather(tails, tail)
        state.collectives += 1
        state.overflow_steps += 1
        parts = [torch.cat([p, t[: max(length - cap, 0)]]) for p, t, length in zip(parts, tails, lengths)]
    state.capacity = max(math.ceil(CAPACITY_HEADROOM * most), int(cap * CAPACITY_DECAY))
    return parts


def _local_rows(params: list[torch.nn.Parameter], dim: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """This rank's coalesced sparse rows, all tables concatenated: int32 row indices (R,),
    values (R, dim) and the row count of each table (0 for a table with no gradient)."""
    idx_parts, val_parts, counts = [], [], []
    for p in params:
        if p.shape[0] >= 2**31 or p.dim() != 2 or p.shape[1] != dim:
            raise ValueError(f"sparse parameters must be (rows < 2**31, {dim}), got {tuple(p.shape)}")
        if p.grad is None:
            counts.append(0)
            continue
        if not p.grad.is_sparse:
            raise ValueError(f"parameter of shape {tuple(p.shape)} was given as sparse but has a dense gradient")
        g = p.grad.coalesce()
        idx_parts.append(g.indices()[0].to(torch.int32))
        val_parts.append(g.values().reshape(-1, dim))
        counts.append(len(idx_parts[-1]))
    idx = torch.cat(idx_parts) if idx_parts else torch.zeros(0, dtype=torch.int32)
    val = torch.cat(val_parts) if val_parts else torch.zeros((0, dim))
    return idx, val, counts


def _set_sparse(params: list[torch.nn.Parameter], rows_idx: list[torch.Tensor], rows_val: list[torch.Tensor],
                all_counts: list[list[int]], w: float) -> None:
    """Each table's gradient from every rank's rows (rank order), / w, uncoalesced: the
    optimizer's ``coalesce()`` sums a row several ranks touched. (Coalescing here with
    ``torch.unique`` + ``index_add_`` was measured: it moved ~0.7 ms per step from the
    optimizer into the exchange and saved nothing, docs/training-at-scale.md.)"""
    starts = [[sum(c[:k]) for k in range(len(c))] for c in all_counts]
    for k, p in enumerate(params):
        pieces = [(starts[r][k], all_counts[r][k]) for r in range(len(all_counts))]
        if not any(n for _, n in pieces):
            p.grad = None
            continue
        gi = torch.cat([rows_idx[r][a : a + n] for r, (a, n) in enumerate(pieces)]).long()
        gv = torch.cat([rows_val[r][a : a + n] for r, (a, n) in enumerate(pieces)]) / w
        p.grad = torch.sparse_coo_tensor(gi[None, :], gv, p.shape, check_invariants=False)
