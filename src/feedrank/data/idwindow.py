"""The newest ``cap`` event ids of a log writer, for idempotent appends in bounded memory.

    ids = IdWindow(cap=500_000)
    ids.update(["e1", "e2"])          # in append order
    "e1" in ids                       # True while e1 is among the newest cap ids added
    ids.difference_update(["e2"])     # forget (a failed fsync: a retry may write it again)

An event log that remembered every id it ever held grows without bound: a serving worker
appends ~20 impressions per feed, i.e. millions of ids an hour at a few hundred feeds a
second (~3.3 GB an hour per worker at 300 feeds/s on two workers, its consumer's reader
of the other partition included: ``benchmarks/eventlog_id_memory.py``). A window of the newest ids keeps what idempotency is for (a client
retry, a replayed batch: seconds) at a fixed cost, ~160 bytes an id.

Exact: an id is a member if and only if it was added among the newest ``cap`` additions
and not forgotten since (re-adding a forgotten id counts as a new addition).
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

DEFAULT_ID_WINDOW = 500_000  # ~80 MB of ids (~160 bytes an id); ~2.6 min of one of two workers' ids at 300 feeds/s


class IdWindow:
    """A set of the newest ``cap`` ids added (module docstring). Not thread-safe: the
    owner's lock guards it."""

    def __init__(self, cap: int = DEFAULT_ID_WINDOW) -> None:
        if int(cap) < 1:
            raise ValueError(f"IdWindow: cap must be >= 1, got {cap}")
        self.cap = int(cap)
        self._number: dict[str, int] = {}  # id -> its addition number (the newest one)
        self._order: deque[str] = deque()  # additions in order; the last is number _next - 1
        self._next = 0

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._number

    def __len__(self) -> int:
        return len(self._number)

    def add(self, event_id: str) -> None:
        self._number[event_id] = self._next
        self._order.append(event_id)
        self._next += 1
        if len(self._order) > self.cap:
            self._trim()

    def update(self, ids: Iterable[str]) -> None:
        number, order, k = self._number, self._order, self._next
        for e in ids:
            number[e] = k
            order.append(e)
            k += 1
        self._next = k
        if len(order) > self.cap:
            self._trim()

    def difference_update(self, ids: Iterable[str]) -> None:
        for e in ids:
            self._number.pop(e, None)

    def clear(self) -> None:
        self._number.clear()
        self._order.clear()

    def _trim(self) -> None:
        """Drop the additions older than the newest ``cap``; an id leaves the set only when
        its newest addition is the one dropped."""
        number, order = self._number, self._order
        while len(order) > self.cap:
            e = order.popleft()
            if number.get(e) == self._next - len(order) - 1:
                del number[e]


IMPRESSION_MARK = b'"kind":"impression"'  # how a logged line of an impression reads (data/events.py)


class EventIds:
    """A log writer's remembered ids, in two windows of ``cap`` each: impressions (~20 per
    served feed, written by the server) and every other event (clicks, dwell, hides: what
    clients post and retry, ~1-3% of the volume). So the impressions' volume never pushes
    a client's click out of the window: at 300 feeds/s on two workers the impression window
    spans ~2.5 minutes of a worker's feeds, the other one hours of its clients' events."""

    def __init__(self, cap: int = DEFAULT_ID_WINDOW) -> None:
        self.events = IdWindow(cap)
        self.impressions = IdWindow(cap)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self.events or event_id in self.impressions

    def __len__(self) -> int:
        return len(self.events) + len(self.impressions)

    def add(self, event_id: str, impression: bool = False) -> None:
        (self.impressions if impression else self.events).add(event_id)

    def update(self, ids: list[str], impression: list[bool]) -> None:
        """``ids`` in append order; ``impression[k]``: whether ``ids[k]`` is an impression."""
        if not any(impression):
            self.events.update(ids)
        elif all(impression):
            self.impressions.update(ids)
        else:
            for e, imp in zip(ids, impression):
                self.add(e, imp)

    def difference_update(self, ids) -> None:
        ids = list(ids)
        self.events.difference_update(ids)
        self.impressions.difference_update(ids)

    def clear(self) -> None:
        self.events.clear()
        self.impressions.clear()
