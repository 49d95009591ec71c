"""``LogConsumer(yield_to=...)``: between slices the consumer waits while the foreground
(a serving worker's event loop running a request) is busy, never longer than
``max_yield_s`` at a time, and applies every event exactly as without it."""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np
import pytest

from feedrank.features.consumer import LogConsumer
from feedrank.types import Event, EventKind


class ListSource:
    def __init__(self, events: list[Event]) -> None:
        self.events = events

    def read(self, from_offset=None):
        start = 0 if from_offset is None else from_offset[1]
        for i in range(start, len(self.events)):
            yield (0, i), self.events[i]


class Recorder:
    """A sink that records the batches it is given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def apply(self, events: Iterable[Event]) -> int:
        ids = [e.event_id for e in events]
        self.batches.append(ids)
        return len(ids)

    def heartbeat(self, now_wall=None) -> None:
        pass

    def state_dict(self):
        return {"n": np.array([sum(map(len, self.batches))])}

    def load_state_dict(self, state) -> None:
        pass


def _events(n: int) -> list[Event]:
    return [Event(event_id=f"e{i}", ts=1000.0 + i, user_id="u", item_id=f"i{i % 7}", kind=EventKind.IMPRESSION)
            for i in range(n)]


def test_without_a_foreground_whole_batches_and_no_waiting():
    sink = Recorder()
    c = LogConsumer(ListSource(_events(300)), sink, None, batch_size=128)
    assert c.poll() == 300
    assert [len(b) for b in sink.batches] == [128, 128, 44]
    assert c.yielded_s == 0.0


def test_a_busy_foreground_is_waited_for_between_slices_but_not_forever():
    busy_until = time.monotonic() + 0.03
    checks = []

    def busy() -> bool:
        checks.append(time.monotonic())
        return time.monotonic() < busy_until

    sink = Recorder()
    c = LogConsumer(ListSource(_events(200)), sink, None, batch_size=64, yield_to=busy, yield_every=16, max_yield_s=1.0)
    t0 = time.monotonic()
    assert c.poll() == 200
    assert [e for b in sink.batches for e in b] == [f"e{i}" for i in range(200)]  # all, in order, once
    assert c.yielded_s >= 0.02 and time.monotonic() - t0 >= 0.025  # it waited for the foreground ...
    assert len(checks) >= 200 // 16  # ... checking at every slice


def test_an_always_busy_foreground_cannot_stall_the_consumer():
    sink = Recorder()
    c = LogConsumer(ListSource(_events(64)), sink, None, batch_size=32, yield_to=lambda: True, yield_every=32,
                    max_yield_s=0.005)
    t0 = time.monotonic()
    assert c.poll() == 64
    assert sum(map(len, sink.batches)) == 64
    assert time.monotonic() - t0 < 1.0  # two bounded waits, not a hang


def test_bad_slice_sizes_are_rejected():
    with pytest.raises(ValueError, match="batch_size and yield_every"):
        LogConsumer(ListSource([]), Recorder(), None, yield_every=0)
