"""``sqlite:///path``: the online store in one SQLite file (WAL), shared by processes.

Tables: ``users``/``items`` (id PRIMARY KEY, ts, data JSON) and ``counters`` (win, key,
bucket, value). Puts merge with ``json_patch``; batched reads use ``IN (...)`` in chunks.
One connection per store object, guarded by a lock (usable from many threads).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import orjson

from feedrank.features.store.base import StoreBase
from feedrank.features.store.protocol import Record, check_features, live_buckets

_CHUNK = 900  # bound parameters per statement (SQLite's default limit is 999 on old builds)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, ts REAL NOT NULL, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, ts REAL NOT NULL, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (win INTEGER NOT NULL, key TEXT NOT NULL, bucket INTEGER NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (win, key, bucket)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS users_ts ON users (ts);
CREATE INDEX IF NOT EXISTS items_ts ON items (ts);
"""


def _chunks(seq: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(seq), _CHUNK):
        yield seq[i : i + _CHUNK]


class SQLiteStore(StoreBase):
    """Implements ``OnlineStore`` on a SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, ttl_s: float = 7 * 86400.0, url: str | None = None) -> None:
        self.path = Path(path)
        self.url = url or f"sqlite:///{self.path}"
        self.ttl_s = float(ttl_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # ------------------------------------------------------------------ features
    def _executemany_atomic(self, sql: str, rows: list[tuple]) -> None:
        """All rows in one transaction: every row is written, or none."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _put_records(self, table: str, rows: Mapping[str, Record], ts: float) -> None:
        data = [(key, ts, orjson.dumps(rec).decode()) for key, rec in rows.items()]
        sql = (f"INSERT INTO {table} (id, ts, data) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
               "ts = excluded.ts, data = json_patch(data, excluded.data)")
        self._executemany_atomic(sql, data)

    def _user_record(self, user_id: str) -> tuple[float, Record] | None:
        with self._lock:
            row = self._db.execute("SELECT ts, data FROM users WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else (row[0], {k: float(v) for k, v in orjson.loads(row[1]).items()})

    def _item_records(self, item_ids: list[str], names: Sequence[str]) -> list[tuple[float, Record] | None]:
        found: dict[str, tuple[float, Record]] = {}
        with self._lock:
            for part in _chunks(list(dict.fromkeys(item_ids))):
                q = f"SELECT id, ts, data FROM items WHERE id IN ({','.join('?' * len(part))})"
                for iid, ts, data in self._db.execute(q, list(part)):
                    found[iid] = (ts, orjson.loads(data))
        return [found.get(i) for i in item_ids]

    # ------------------------------------------------------------------ counters
    def _add_counts(self, window_s: int, keys: list[str], b: int, amts: list[float], ts: float) -> None:
        rows = [(window_s, k, b, a) for k, a in zip(keys, amts)]
        sql = ("INSERT INTO counters (win, key, bucket, value) VALUES (?, ?, ?, ?) "
               "ON CONFLICT(win, key, bucket) DO UPDATE SET value = value + excluded.value")
        self._executemany_atomic(sql, rows)

    def _sum_counts(self, window_s: int, keys: list[str], first: int, last: int) -> np.ndarray:
        sums: dict[str, float] = {}
        with self._lock:
            for part in _chunks(list(dict.fromkeys(keys))):
                q = (f"SELECT key, SUM(value) FROM counters WHERE win = ? AND bucket BETWEEN ? AND ? "
                     f"AND key IN ({','.join('?' * len(part))}) GROUP BY key")
                sums.update(self._db.execute(q, [window_s, first, last, *part]).fetchall())
        return np.array([sums.get(k, 0.0) for k in keys], dtype=np.float64)

    # ------------------------------------------------------------------ eviction, state
    def evict(self, now: float) -> int:
        n = 0
        with self._lock:
            self._db.execute("BEGIN")
            if self.ttl_s > 0:
                for table in ("users", "items"):
                    n += self._db.execute(f"DELETE FROM {table} WHERE ts < ?", (now - self.ttl_s,)).rowcount
            for (win,) in self._db.execute("SELECT DISTINCT win FROM counters").fetchall():
                first, _ = live_buckets(int(win), now)
                self._db.execute("DELETE FROM counters WHERE win = ? AND bucket < ?", (win, first))
            self._db.execute("COMMIT")
        return n

    def export_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"users": {}, "items": {}, "counters": {}}
        with self._lock:
            for table in ("users", "items"):
                for iid, ts, data in self._db.execute(f"SELECT id, ts, data FROM {table}"):
                    out[table][iid] = [ts, orjson.loads(data)]
            for win, key, bucket, value in self._db.execute("SELECT win, key, bucket, value FROM counters"):
                out["counters"].setdefault(int(win), {}).setdefault(key, {})[int(bucket)] = value
        return out

    def import_state(self, state: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for table in ("users", "items", "counters"):
                    self._db.execute(f"DELETE FROM {table}")
                for table in ("users", "items"):
                    rows = [(str(k), float(ts), orjson.dumps(check_features(r)).decode())
                            for k, (ts, r) in state.get(table, {}).items()]
                    self._db.executemany(f"INSERT INTO {table} (id, ts, data) VALUES (?, ?, ?)", rows)
                rows_c = [(int(w), str(k), int(b), float(v)) for w, keys in state.get("counters", {}).items()
                          for k, bk in keys.items() for b, v in bk.items()]
                self._db.executemany("INSERT INTO counters (win, key, bucket, value) VALUES (?, ?, ?, ?)", rows_c)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
