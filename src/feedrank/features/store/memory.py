"""``memory://``: the in-process online store (dicts under one lock), with snapshots.

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
from feedrank.features.store.protocol import COUNTER_BUCKETS, Record, check_features, is_cold, live_buckets


class MemoryStore(StoreBase):
    """Implements ``OnlineStore`` in process memory (see the module docstring)."""

    def __init__(self, ttl_s: float = 7 * 86400.0, max_records: int = 2_000_000, url: str = "memory://") -> None:
        self.url = url
        self.ttl_s = float(ttl_s)
        self.max_records = int(max_records)
        self._lock = threading.Lock()
        self._tables: dict[str, OrderedDict[str, tuple[float, Record]]] = {"users": OrderedDict(), "items": OrderedDict()}
        self._counters: dict[int, dict[str, dict[int, float]]] = {}
        self.evicted = 0

    # ------------------------------------------------------------------ features
    def _put_records(self, table: str, rows: Mapping[str, Record], ts: float) -> None:
        with self._lock:
            t = self._tables[table]
            for key, features in rows.items():
                old = t.pop(key, None)
                rec = dict(old[1]) if old is not None else {}
                rec.update(features)
                t[key] = (ts, rec)
                over = len(self._tables["users"]) + len(self._tables["items"]) - self.max_records
                while over > 0:
                    max(self._tables.values(), key=len).popitem(last=False)  # oldest write of the larger table
                    self.evicted += 1
                    over -= 1

    def _user_record(self, user_id: str) -> tuple[float, Record] | None:
        with self._lock:
            return self._tables["users"].get(user_id)

    def _item_records(self, item_ids: list[str], names: Sequence[str]) -> list[tuple[float, Record] | None]:
        with self._lock:
            t = self._tables["items"]
            return [t.get(i) for i in item_ids]

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
            for t in self._tables.values():
                cold = [k for k, (ts, _) in t.items() if is_cold(ts, now, self.ttl_s)]
                for k in cold:
                    del t[k]
                n += len(cold)
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
                "users": {k: [ts, dict(r)] for k, (ts, r) in self._tables["users"].items()},
                "items": {k: [ts, dict(r)] for k, (ts, r) in self._tables["items"].items()},
                "counters": {w: {k: dict(b) for k, b in keys.items()} for w, keys in self._counters.items()},
            }

    def import_state(self, state: Mapping[str, Any]) -> None:
        with self._lock:
            for name in ("users", "items"):
                t: OrderedDict[str, tuple[float, Record]] = OrderedDict()
                for k, (ts, rec) in sorted(state.get(name, {}).items(), key=lambda kv: kv[1][0]):
                    t[str(k)] = (float(ts), check_features(rec))
                self._tables[name] = t
            self._counters = {int(w): {str(k): {int(b): float(v) for b, v in bk.items()} for k, bk in keys.items()}
                              for w, keys in state.get("counters", {}).items()}

    def close(self) -> None:
        """Nothing to release (snapshot first if the state must survive)."""

    def __len__(self) -> int:
        with self._lock:
            return len(self._tables["users"]) + len(self._tables["items"])
