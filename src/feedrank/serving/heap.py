"""Keep CPython's cyclic garbage collector off the request path.

A loaded model is mostly long-lived Python containers: the 1M-item bench bundle leaves
about 512,000 tracked objects, and one full (generation 2) collection walks all of them,
~170 ms on this machine (`benchmarks/README.md`, "Garbage collector"). CPython starts
such a collection by itself once enough objects have survived since the last one, so under
load a request now and then waited behind one: on the 1M x 1M world at 300 rps the server's
p50 was 4.8 ms and its p99 374 ms.

``freeze_loaded`` runs once after a model is loaded and warmed (server start, a hot swap,
an experiment arm's pinned version): it collects what is garbage now, then moves every
surviving object to the permanent generation (``gc.freeze``), which later collections skip.
Objects allocated while serving are still collected as usual, and frozen objects are still
freed by reference counting. Before freezing again it un-freezes, so that a swapped-out
model's reference cycles are collected rather than kept for the life of the process; that
one collection is the price of a swap: about the pause above, and since it holds the GIL,
every thread of the worker (requests included) waits for it once per swap.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)
_lock = threading.Lock()


@dataclass(frozen=True)
class FreezeResult:
    reason: str
    collected: int      # unreachable objects found by the collection before freezing
    frozen: int         # objects now in the permanent generation
    pause_ms: float     # wall time of unfreeze + collect + freeze


def freeze_loaded(reason: str) -> FreezeResult:
    """Collect once, then freeze every live object (see the module docstring)."""
    with _lock:
        t0 = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        result = FreezeResult(reason, collected, gc.get_freeze_count(), 1000.0 * (time.perf_counter() - t0))
    log.info("heap frozen after %s: %d objects frozen, %d collected, %.0f ms", reason, result.frozen,
             result.collected, result.pause_ms)
    return result
