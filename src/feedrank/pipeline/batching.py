"""Coalesce concurrent calls into micro-batches (leader/follower, no extra thread).

    batcher = MicroBatcher(score_many, max_wait_ms=1.5, max_batch=32)
    out = batcher.submit(x)        # from any request thread

The first caller to arrive becomes the batch's leader. It waits up to ``max_wait_ms`` (or
until ``max_batch`` calls are pending), takes every pending call, runs ``fn`` once on the
list, and hands each follower its own result. A caller alone pays at most the wait. Under
concurrency, one call of ``fn`` replaces many small ones: for a ranker, one matrix multiply
over all requests' candidates instead of one per request. An exception in ``fn`` is raised
in every caller of that batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

X = TypeVar("X")
Y = TypeVar("Y")


@dataclass
class _Pending(Generic[X, Y]):
    x: X
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class MicroBatcher(Generic[X, Y]):
    def __init__(self, fn: Callable[[list[X]], list[Y]], max_wait_ms: float = 1.5, max_batch: int = 32) -> None:
        self.fn = fn
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._full = threading.Condition(self._lock)
        self._pending: list[_Pending[X, Y]] = []
        self._leader = False
        self.batches = 0
        self.calls = 0

    def submit(self, x: X) -> Y:
        item: _Pending[X, Y] = _Pending(x)
        with self._lock:
            self._pending.append(item)
            self.calls += 1
            if len(self._pending) >= self.max_batch:
                self._full.notify()
            lead = not self._leader
            if lead:
                self._leader = True
        if lead:
            self._lead()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def _lead(self) -> None:
        deadline = time.monotonic() + self.max_wait_s
        with self._lock:
            while len(self._pending) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._full.wait(left)
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._leader = False
            if self._pending:  # overflow: the next caller's arrival elects a new leader
                self._leader = True
                threading.Thread(target=self._lead, daemon=True).start()
            self.batches += 1
        try:
            results = self.fn([p.x for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batched function returned {len(results)} results for {len(batch)} inputs")
            for p, r in zip(batch, results):
                p.result = r
        except BaseException as exc:  # every caller of the batch sees the failure
            for p in batch:
                p.error = exc
        finally:
            for p in batch:
                p.done.set()
