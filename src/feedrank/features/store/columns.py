"""The memory:// store's item records as columns (``MemoryStore``): one row per item, a
float64 column and a "stored" mask per feature name, the write time and the write order
(for LRU) per row. A write of N items is a dict lookup per item and one vectorised
assignment per name; a batched read is one gather per name.

    t = ItemColumns()
    t.put(["i1", "i2"], ["ctr"], np.array([[0.1], [0.2]]), ts=now, seq=np.arange(2))
    values, present, found, ts = t.get(["i1", "zz"], ["ctr"])

Not thread-safe: the store calls it under its lock.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

from feedrank.features.store.protocol import Record


class ItemColumns:
    """Item records (see the module docstring)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}      # item id -> row
        self.keys = np.empty(0, dtype=object)  # row -> item id (None: free)
        self.free: list[int] = []
        self.ts = np.zeros(0)                # write time per row
        self.seq = np.zeros(0, dtype=np.int64)  # write order per row (the store's counter)
        self.cols: dict[str, np.ndarray] = {}   # name -> (cap,) float64
        self.has: dict[str, np.ndarray] = {}    # name -> (cap,) bool: a value is stored

    def __len__(self) -> int:
        return len(self.index)

    def _grow(self, need: int) -> None:
        cap = len(self.keys)
        new = max(1024, 2 * cap, cap + need)
        self.keys = np.concatenate([self.keys, np.full(new - cap, None, dtype=object)])
        self.free.extend(range(new - 1, cap - 1, -1))
        self.ts = np.concatenate([self.ts, np.zeros(new - cap)])
        self.seq = np.concatenate([self.seq, np.zeros(new - cap, dtype=np.int64)])
        for name in self.cols:
            self.cols[name] = np.concatenate([self.cols[name], np.zeros(new - cap)])
            self.has[name] = np.concatenate([self.has[name], np.zeros(new - cap, dtype=bool)])

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of ``keys``, new rows for the new ones."""
        index = self.index
        rows = list(map(index.get, keys))
        if None in rows:
            new = [k for k in dict.fromkeys(keys) if k not in index]
            if len(self.free) < len(new):
                self._grow(len(new) - len(self.free))
            got = self.free[len(self.free) - len(new):][::-1]
            del self.free[len(self.free) - len(new):]
            index.update(zip(new, got))
            self.keys[np.asarray(got, dtype=np.int64)] = new
            rows = list(map(index.__getitem__, keys))
        return np.fromiter(rows, dtype=np.int64, count=len(rows))

    def _column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        col = self.cols.get(name)
        if col is None:
            col = self.cols[name] = np.zeros(len(self.keys))
            self.has[name] = np.zeros(len(self.keys), dtype=bool)
        return col, self.has[name]

    def put(self, keys: Sequence[str], names: Sequence[str], table: np.ndarray, ts: float, seq: np.ndarray) -> None:
        """Merge row ``i`` of ``table`` (N, F) into the record of ``keys[i]`` at ``ts``; a key
        twice keeps its last row. ``seq``: (N,) write order of each."""
        rows = self.rows(keys)
        if len(np.unique(rows)) < len(rows):  # a key twice: its last row wins (numpy leaves repeated assignment order open)
            _, last = np.unique(rows[::-1], return_index=True)
            pick = len(rows) - 1 - last
            rows, table, seq = rows[pick], table[pick], np.asarray(seq)[pick]
        self.ts[rows] = ts
        self.seq[rows] = seq
        for j, name in enumerate(names):
            col, has = self._column(name)
            col[rows] = table[:, j]
            has[rows] = True

    def put_record(self, key: str, record: Record, ts: float, seq: int) -> None:
        """Merge one record (the dict path: ``put_items``)."""
        r = int(self.rows([key])[0])
        self.ts[r], self.seq[r] = ts, seq
        for name, v in record.items():
            col, has = self._column(name)
            col[r], has[r] = v, True

    def get(self, keys: Sequence[str], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(values (N, F) NaN where absent, present (N, F), found (N,), ts (N,) NaN where not found)."""
        get = self.index.get
        rows = np.fromiter((-1 if r is None else r for r in map(get, keys)), dtype=np.int64, count=len(keys))
        found = rows >= 0
        at = rows[found]
        values = np.full((len(keys), len(names)), np.nan)
        present = np.zeros((len(keys), len(names)), dtype=bool)
        for j, name in enumerate(names):
            col = self.cols.get(name)
            if col is not None and len(at):
                p = self.has[name][at]
                present[found, j] = p
                values[np.flatnonzero(found)[p], j] = col[at[p]]
        ts = np.full(len(keys), np.nan)
        ts[found] = self.ts[at]
        return values, present, found, ts

    def record(self, key: str) -> tuple[float, Record] | None:
        r = self.index.get(key)
        if r is None:
            return None
        return float(self.ts[r]), {name: float(col[r]) for name, col in self.cols.items() if self.has[name][r]}

    def delete(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        for r in rows.tolist():
            key = self.keys[r]
            if key is not None:
                del self.index[key]
                self.keys[r] = None
                self.free.append(r)
        for has in self.has.values():
            has[rows] = False

    def live_rows(self) -> np.ndarray:
        return np.fromiter(self.index.values(), dtype=np.int64, count=len(self.index))

    def oldest(self, k: int) -> np.ndarray:
        """The ``k`` rows written longest ago."""
        live = self.live_rows()
        if k >= len(live):
            return live
        return live[np.argpartition(self.seq[live], k - 1)[:k]]

    def cold(self, now: float, ttl_s: float) -> np.ndarray:
        live = self.live_rows()
        return live[now - self.ts[live] > ttl_s] if ttl_s > 0 else live[:0]

    def items(self) -> Iterator[tuple[str, tuple[float, Record]]]:
        """(key, (ts, record)) in write order."""
        live = self.live_rows()
        for r in live[np.argsort(self.seq[live], kind="stable")].tolist():
            key = self.keys[r]
            assert key is not None
            yield key, (float(self.ts[r]), {n: float(c[r]) for n, c in self.cols.items() if self.has[n][r]})


def from_records(records: Mapping[str, tuple[float, Record]]) -> ItemColumns:
    """A table of ``{key: (ts, record)}`` written in ts order."""
    t = ItemColumns()
    for seq, (k, (ts, rec)) in enumerate(sorted(records.items(), key=lambda kv: kv[1][0])):
        t.put_record(str(k), rec, float(ts), seq)
    return t
