"""In-process online state: per-user recent clicks and seen items, per-item counters.

Bounded: each user keeps at most ``history_len`` clicks and ``seen_memory`` seen items
(each seen item expires ``seen_ttl_s`` after its last impression);
the number of users kept is capped (least recently updated evicted). Thread-safe.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class UserContext:
    """What the pipeline reads about one user at request time."""

    history: np.ndarray          # (L,) int64 item indices, -1 padded left, most recent last
    seen: frozenset[str]
    n_clicks: int
    known: bool

    @property
    def has_history(self) -> bool:
        """Whether the history holds a click (what the sources and the prior's cold-user weights read)."""
        return bool(len(self.history) and self.history.max() >= 0)


@dataclass
class _UserRecord:
    clicks: deque = field(default_factory=deque)
    seen: OrderedDict = field(default_factory=OrderedDict)
    n_clicks: int = 0


class OnlineState:
    def __init__(self, n_items: int, history_len: int, seen_memory: int, max_users: int = 1_000_000,
                 seen_ttl_s: float | None = None) -> None:
        self.history_len = history_len
        self.seen_memory = seen_memory
        self.seen_ttl_s = seen_ttl_s
        self.max_users = max_users
        self.item_impressions = np.zeros(n_items, dtype=np.float64)
        self.item_clicks = np.zeros(n_items, dtype=np.float64)
        self._users: OrderedDict[str, _UserRecord] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    def _record(self, user_id: str) -> _UserRecord:
        rec = self._users.get(user_id)
        if rec is None:
            rec = _UserRecord(clicks=deque(maxlen=self.history_len))
            self._users[user_id] = rec
            if len(self._users) > self.max_users:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(user_id)
        return rec

    def load_user(self, user_id: str, history: np.ndarray, n_clicks: int, seen: list[str] | None = None) -> None:
        """Bulk-load one user's state (from a model bundle)."""
        with self._lock:
            rec = self._record(user_id)
            rec.clicks.extend(int(i) for i in history if i >= 0)
            rec.n_clicks = int(n_clicks)
            for s in seen or []:
                rec.seen[s] = None

    def record_click(self, user_id: str, item_idx: int) -> None:
        with self._lock:
            rec = self._record(user_id)
            rec.clicks.append(int(item_idx))
            rec.n_clicks += 1
            self.item_clicks[item_idx] += 1

    def record_impression(self, user_id: str, item_id: str, item_idx: int, ts: float | None = None) -> None:
        """``ts`` is when it was shown (None: never expires from the seen memory)."""
        self.record_impressions(user_id, [item_id], np.array([item_idx], dtype=np.int64), ts)

    def record_impressions(self, user_id: str, item_ids: list[str], item_rows: np.ndarray, ts: float | None = None) -> None:
        """``record_impression`` for each (item id, row) of one user at one time (a served
        feed), in order: one lock and one user lookup."""
        if not item_ids:
            return
        if len(item_ids) != len(item_rows):
            raise ValueError(f"record_impressions: {len(item_ids)} item ids but {len(item_rows)} rows")
        when = math.inf if ts is None else float(ts)
        with self._lock:
            rec = self._record(user_id)
            seen = rec.seen
            for iid in item_ids:
                seen[iid] = when
                seen.move_to_end(iid)
            while len(seen) > self.seen_memory:
                seen.popitem(last=False)
            np.add.at(self.item_impressions, np.asarray(item_rows, dtype=np.int64), 1.0)

    def seen_items(self, user_id: str, now: float | None = None) -> tuple[str, ...]:
        """The user's seen item ids at ``now`` (as ``context``), least recently shown first."""
        with self._lock:
            rec = self._users.get(user_id)
            return () if rec is None else tuple(self._seen(rec, now))

    def context(self, user_id: str, now: float | None = None) -> UserContext:
        """The user's state at ``now``: seen items older than the TTL are dropped."""
        with self._lock:
            rec = self._users.get(user_id)
            hist = np.full(self.history_len, -1, dtype=np.int64)
            if rec is None:
                return UserContext(hist, frozenset(), 0, False)
            clicks = list(rec.clicks)
            if clicks:
                hist[-len(clicks):] = clicks
            return UserContext(hist, frozenset(self._seen(rec, now)), rec.n_clicks, True)

    def _seen(self, rec: _UserRecord, now: float | None) -> list[str]:
        """Under ``_lock``: the record's seen item ids shown within the TTL of ``now``, least
        recently shown first (the expired ones at the front are dropped from the record)."""
        if self.seen_ttl_s is None or now is None:
            return list(rec.seen)
        cutoff = now - self.seen_ttl_s
        while rec.seen and next(iter(rec.seen.values())) < cutoff:
            rec.seen.popitem(last=False)
        return [i for i, t in rec.seen.items() if t >= cutoff]
