"""``memory://``: the in-process online store (under one lock), with snapshots. User
records are dicts; item records are columns (features/store/columns.py), so the live
consumer's ``put_item_table`` and batched ``get_items`` cost a dict lookup per item and a
vectorised copy per feature name.

    store = MemoryStore(ttl_s=7 * 86400, max_records=1_000_000)

Bounded: records older than ``ttl_s`` are evicted by ``evict(now)``; when more than
``max_records`` user+item records exist, the least recently written are dropped on write
(LRU by write). Counter buckets older than their window are dropped on write and evict.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np

from feedrank.features.store.base import StoreBase
from feedrank.features.store.columns import ItemColumns
from feedrank.features.store.columns import from_records as items_from_records
from feedrank.features.store.protocol import (COUNTER_BUCKETS, FeatureBatch, Record, check_features, check_table,
                                              is_cold, live_buckets)


class MemoryStore(StoreBase):
    """Implements ``OnlineStore`` in process memory (see the module docstring)."""

    def __init__(self, ttl_s: float = 7 * 86400.0, max_records: int = 2_000_000, url: str = "memory://") -> None:
        self.url = url
        self.ttl_s = float(ttl_s)
        self.max_records = int(max_records)
        self._lock = threading.Lock()
        self._users: OrderedDict[str, tuple[float, Record]] = OrderedDict()  # in write order
        self._items = ItemColumns()
        self._seq = 0  # writes so far: the items' write order
        self._counters: dict[int, dict[str, dict[int, float]]] = {}
        self.evicted = 0

    # ------------------------------------------------------------------ features
    def _put_records(self, table: str, rows: Mapping[str, Record], ts: float) -> None:
        with self._lock:
            if table == "items":
                for key, features in rows.items():
                    self._items.put_record(key, features, ts, self._seq)
                    self._seq += 1
            else:
                t = self._users
                for key, features in rows.items():
                    old = t.pop(key, None)
                    rec = dict(old[1]) if old is not None else {}
                    rec.update(features)
                    t[key] = (ts, rec)
            self._trim_locked()

    def put_item_table(self, item_ids: Sequence[str], names: Sequence[str], values: np.ndarray, ts: float,
                       extra: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """``put_items`` of a table (see ``OnlineStore``): written as columns, no dict
        per item and no check per value (a float64 table holds numbers only)."""
        table = check_table(item_ids, names, values)
        checked = {str(k): check_features(v) for k, v in (extra or {}).items()}
        keys = [k if type(k) is str else str(k) for k in item_ids]
        with self._lock:
            self._items.put(keys, names, table, float(ts), np.arange(self._seq, self._seq + len(keys)))
            self._seq += len(keys)
            self._trim_locked()
        if checked:
            self._put_records("items", checked, float(ts))

    def _trim_locked(self) -> None:
        """Over ``max_records``: drop the oldest write of the larger table, one at a time."""
        over = len(self._users) + len(self._items) - self.max_records
        if over <= 0:
            return
        nu, ni = len(self._users), len(self._items)
        for _ in range(over):
            if nu >= ni:
                nu -= 1
            else:
                ni -= 1
        for _ in range(len(self._users) - nu):
            self._users.popitem(last=False)
        if ni < len(self._items):
            self._items.delete(self._items.oldest(len(self._items) - ni))
        self.evicted += over

    def _user_record(self, user_id: str) -> tuple[float, Record] | None:
        with self._lock:
            return self._users.get(user_id)

    def _item_records(self, item_ids: list[str], names: Sequence[str]) -> list[tuple[float, Record] | None]:
        with self._lock:
            return [self._items.record(i) for i in item_ids]

    def get_items(self, item_ids: Sequence[str], names: Sequence[str], now: float) -> FeatureBatch:
        keys = [k if type(k) is str else str(k) for k in item_ids]
        with self._lock:
            values, present, found, ts = self._items.get(keys, list(names))
        if self.ttl_s > 0:
            cold = found & (now - np.nan_to_num(ts, nan=now) > self.ttl_s)
            if cold.any():
                found &= ~cold
                values[cold], present[cold], ts[cold] = np.nan, False, np.nan
        return FeatureBatch(values, found, ts, None, present)

    # ------------------------------------------------------------------ counters
    def _add_counts(self, window_s: int, keys: list[str], b: int, amts: list[float], ts: float) -> None:
        with self._lock:
            w = self._counters.setdefault(window_s, {})
            for key, a in zip(keys, amts):
                buckets = w.get(key)
                if buckets is None:
                    buckets = w[key] = {}
                buckets[b] = buckets.get(b, 0.0) + a
                if len(buckets) > 2 * COUNTER_BUCKETS:  # prune buckets older than the window
                    first, _ = live_buckets(window_s, ts)
                    for old in [x for x in buckets if x < first]:
                        del buckets[old]

    def _sum_counts(self, window_s: int, keys: list[str], first: int, last: int) -> np.ndarray:
        out = np.zeros(len(keys), dtype=np.float64)
        with self._lock:
            w = self._counters.get(window_s, {})
            for i, key in enumerate(keys):
                buckets = w.get(key)
                if buckets:
                    out[i] = sum(v for b, v in buckets.items() if first <= b <= last)
        return out

    # ------------------------------------------------------------------ eviction, state
    def evict(self, now: float) -> int:
        n = 0
        with self._lock:
            cold = [k for k, (ts, _) in self._users.items() if is_cold(ts, now, self.ttl_s)]
            for k in cold:
                del self._users[k]
            rows = self._items.cold(now, self.ttl_s)
            self._items.delete(rows)
            n = len(cold) + len(rows)
            for window_s, w in self._counters.items():
                first, _ = live_buckets(window_s, now)
                for key in list(w):
                    buckets = {b: v for b, v in w[key].items() if b >= first}
                    if buckets:
                        w[key] = buckets
                    else:
                        del w[key]
        self.evicted += n
        return n

    def export_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "users": {k: [ts, dict(r)] for k, (ts, r) in self._users.items()},
                "items": {k: [ts, r] for k, (ts, r) in self._items.items()},
                "counters": {w: {k: dict(b) for k, b in keys.items()} for w, keys in self._counters.items()},
            }

    def import_state(self, state: Mapping[str, Any]) -> None:
        with self._lock:
            users: OrderedDict[str, tuple[float, Record]] = OrderedDict()
            for k, (ts, rec) in sorted(state.get("users", {}).items(), key=lambda kv: kv[1][0]):
                users[str(k)] = (float(ts), check_features(rec))
            items = {str(k): (float(ts), check_features(rec)) for k, (ts, rec) in state.get("items", {}).items()}
            self._users, self._items = users, items_from_records(items)
            self._seq = len(items)
            self._counters = {int(w): {str(k): {int(b): float(v) for b, v in bk.items()} for k, bk in keys.items()}
                              for w, keys in state.get("counters", {}).items()}

    def close(self) -> None:
        """Nothing to release (snapshot first if the state must survive)."""

    def __len__(self) -> int:
        with self._lock:
            return len(self._users) + len(self._items)
