"""Which catalogue rows are retrievable at a time, and the newest of them per key, in O(k).

    live = LiveCatalog(catalog.published_at, {"category": catalog.cat_idx,
                       "creator": catalog.creator_hash, "subcategory": catalog.sub_idx},
                       max_age_s=info["max_item_age_s"])            # once, at load: O(N log N)
    live.newest("category", [3, 7], now, 24 * 3600.0, k=50)          # per request: O(k) typical
    live.mask(rows, now)                                             # liveness of just these rows
    live.add(rows, published_at, keys, expires_at, replaced=old_rows)  # items posted while serving

A row is *live* at ``now`` when it has not expired (``expires_at > now``), was not replaced
by an update, and, when the bundle has an age limit, was published within ``max_age_s``
before ``now`` (and not after it). Liveness is a few array lookups per row, so it is
checked only on the rows a request looks at, never over the catalogue.

``newest`` walks a time-sorted index per key (``TimeIndex``): for each key, the rows
sorted by (publish time, then row descending), so a walk from the end visits rows newest
first with ties in row order, the order a brute-force ``argsort(age, kind="stable")`` over
the whole catalogue gives. The walk stops after ``k`` live rows: its cost is O(k + the dead
or expired rows it skips), whatever the catalogue size. Rows added while serving are
inserted in place (O(N) memory moves per batch, no per-request cost).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from feedrank.retrieval.sources import sorted_unique

ALL = "__all__"  # the index over every row (key 0), for "newest items" without a key


class TimeIndex:
    """Rows grouped by an integer key, each group sorted by publish time (ties: row
    ascending when walked newest first). Rows with an unknown publish time (NaN) are not
    indexed: they are never within a time window."""

    def __init__(self, keys: np.ndarray, published_at: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        pub = np.asarray(published_at, dtype=np.float64)
        if keys.shape != pub.shape or keys.ndim != 1:
            raise ValueError(f"keys {keys.shape} and published_at {pub.shape} must be equal 1-d shapes")
        rows = np.flatnonzero(~np.isnan(pub)).astype(np.int64)
        order = np.lexsort((-rows, pub[rows], keys[rows]))
        rows = rows[order]
        # one tuple, swapped whole by ``insert``: a concurrent reader sees all old or all new
        self.arrays: tuple[np.ndarray, np.ndarray, np.ndarray] = (keys[rows], pub[rows], rows)

    @property
    def keys(self) -> np.ndarray:
        return self.arrays[0]

    @property
    def pub(self) -> np.ndarray:
        return self.arrays[1]

    @property
    def rows(self) -> np.ndarray:
        return self.arrays[2]

    def __len__(self) -> int:
        return len(self.rows)

    def insert(self, keys: np.ndarray, published_at: np.ndarray, rows: np.ndarray) -> None:
        """Add rows (larger than every indexed row, as appended catalogue rows are)."""
        keys = np.asarray(keys, dtype=np.int64)
        pub = np.asarray(published_at, dtype=np.float64)
        rows = np.asarray(rows, dtype=np.int64)
        ok = ~np.isnan(pub)
        keys, pub, rows = keys[ok], pub[ok], rows[ok]
        if not len(rows):
            return
        # within a (key, time) tie a larger row sorts first: insert at the left of the tie
        order = np.lexsort((-rows, pub, keys))
        keys, pub, rows = keys[order], pub[order], rows[order]
        old_keys, old_pub, old_rows = self.arrays
        lo = np.searchsorted(old_keys, keys, side="left")
        hi = np.searchsorted(old_keys, keys, side="right")
        pos = np.array([a + int(np.searchsorted(old_pub[a:b], p, side="left")) for a, b, p in
                        zip(lo.tolist(), hi.tolist(), pub.tolist())], dtype=np.int64)
        self.arrays = (np.insert(old_keys, pos, keys), np.insert(old_pub, pos, pub), np.insert(old_rows, pos, rows))

    def window(self, key: int, start: float, end: float) -> tuple[int, int, np.ndarray]:
        """Positions [a, b) of ``key``'s rows published in [start, end], and the rows array
        those positions index (the one current when called)."""
        keys, pub, rows = self.arrays
        lo = int(np.searchsorted(keys, key, side="left"))
        hi = int(np.searchsorted(keys, key, side="right"))
        if lo == hi:
            return lo, lo, rows
        pub = pub[lo:hi]
        return lo + int(np.searchsorted(pub, start, side="left")), lo + int(np.searchsorted(pub, end, side="right")), rows


class LiveCatalog:
    """Liveness per row plus ``TimeIndex`` es per key kind (module docstring). Thread-safe:
    ``add`` swaps whole arrays under a lock; readers see either the old or the new ones."""

    def __init__(self, published_at: np.ndarray, keys: Mapping[str, np.ndarray], max_age_s: float | None = None,
                 expires_at: np.ndarray | None = None) -> None:
        pub = np.asarray(published_at, dtype=np.float64)
        n = len(pub)
        self.max_age_s = None if max_age_s is None else float(max_age_s)
        self.published_at = pub
        self.expires_at = np.full(n, np.inf) if expires_at is None else np.asarray(expires_at, dtype=np.float64)
        if len(self.expires_at) != n:
            raise ValueError(f"expires_at has {len(self.expires_at)} rows, published_at {n}")
        self.dead = np.zeros(n, dtype=bool)
        self.n_dead = 0
        self.n_expiring = int(np.isfinite(self.expires_at).sum())
        self._lock = threading.Lock()
        self.indexes: dict[str, TimeIndex] = {ALL: TimeIndex(np.zeros(n, dtype=np.int64), pub)}
        for name, k in keys.items():
            if len(k) != n:
                raise ValueError(f"key {name!r} has {len(k)} rows, published_at {n}")
            self.indexes[name] = TimeIndex(k, pub)

    def __len__(self) -> int:
        return len(self.published_at)

    @property
    def always_live(self) -> bool:
        """True when every row is live at any time (no age limit, expiry or replaced row)."""
        return self.max_age_s is None and self.n_dead == 0 and self.n_expiring == 0

    # ------------------------------------------------------------------ writes
    def add(self, rows: np.ndarray, published_at: np.ndarray, keys: Mapping[str, np.ndarray],
            expires_at: np.ndarray | None = None, replaced: Sequence[int] = ()) -> None:
        """Rows appended to the catalogue (``rows`` must be ``len(self)..``), with their key
        per index; ``replaced``: older rows an update supersedes (never live again)."""
        rows = np.asarray(rows, dtype=np.int64)
        pub = np.asarray(published_at, dtype=np.float64)
        exp = np.full(len(rows), np.inf) if expires_at is None else np.asarray(expires_at, dtype=np.float64)
        if not np.array_equal(rows, np.arange(len(self), len(self) + len(rows))):
            raise ValueError(f"rows must follow the catalogue ({len(self)}..), got {rows[:5].tolist()}...")
        missing = set(self.indexes) - {ALL} - set(keys)
        if missing or len(pub) != len(rows) or len(exp) != len(rows):
            raise ValueError(f"add: {len(rows)} rows need as many published_at/expires_at and keys {sorted(missing)}")
        with self._lock:
            dead = np.concatenate([self.dead, np.zeros(len(rows), dtype=bool)])
            replaced = np.asarray(list(replaced), dtype=np.int64)
            dead[replaced] = True
            self.published_at = np.concatenate([self.published_at, pub])
            self.expires_at = np.concatenate([self.expires_at, exp])
            self.dead = dead
            self.n_dead = int(dead.sum())
            self.n_expiring += int(np.isfinite(exp).sum())
            self.indexes[ALL].insert(np.zeros(len(rows), dtype=np.int64), pub, rows)
            for name, k in keys.items():
                if name in self.indexes:
                    self.indexes[name].insert(np.asarray(k, dtype=np.int64), pub, rows)

    def set_expiry(self, rows: np.ndarray, expires_at: np.ndarray) -> None:
        """Change the expiry of existing ``rows`` in place (``inf``: never), e.g. an item
        update that only moved its expiry: the row, its vectors and counters stay."""
        rows = np.asarray(rows, dtype=np.int64)
        exp = np.asarray(expires_at, dtype=np.float64)
        if len(rows) != len(exp):
            raise ValueError(f"set_expiry: {len(rows)} rows but {len(exp)} expiries")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise ValueError(f"set_expiry: rows must be in 0..{len(self) - 1}")
        with self._lock:
            new = self.expires_at.copy()  # readers keep the array they hold
            new[rows] = exp
            self.expires_at = new
            self.n_expiring = int(np.isfinite(new).sum())

    # ------------------------------------------------------------------ reads
    def mask(self, rows: np.ndarray, now: float) -> np.ndarray:
        """(n,) bool: which of ``rows`` are live at ``now``."""
        rows = np.asarray(rows, dtype=np.int64)
        ok = (self.expires_at[rows] > now) & ~self.dead[rows]
        if self.max_age_s is not None:
            age = now - self.published_at[rows]
            ok &= (age >= 0) & (age <= self.max_age_s)
        return ok

    def live_rows(self, now: float) -> np.ndarray | None:
        """(M,) int64 every row live at ``now`` (None: all of them). O(N): for caches
        refreshed every few seconds, never per request."""
        if self.always_live:
            return None
        return np.flatnonzero(self.mask(np.arange(len(self)), now)).astype(np.int64)

    def newest(self, index: str, keys: Sequence[int] | np.ndarray | None, now: float, max_age_s: float,
               k: int) -> np.ndarray:
        """Up to ``k`` live rows published within ``max_age_s`` before ``now`` (not after it)
        whose key in ``index`` is one of ``keys`` (None: any row), newest first, ties in
        row order."""
        if keys is None:
            return self.newest_of([(ALL, [0])], now, max_age_s, k)
        return self.newest_of([(index, keys)], now, max_age_s, k)

    def newest_of(self, queries: Sequence[tuple[str, Sequence[int] | np.ndarray]], now: float, max_age_s: float,
                  k: int) -> np.ndarray:
        """``newest`` over a union: rows matching any key of any ``(index, keys)`` query
        (e.g. followed creators or followed subcategories), each row once."""
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        start = now - max_age_s
        parts = []
        for index, keys in queries:
            idx = self.indexes.get(index)
            if idx is None:
                raise ValueError(f"no time index {index!r}; this catalogue has {sorted(self.indexes)}")
            for key in sorted(set(np.asarray(keys, dtype=np.int64).ravel().tolist())):  # np.unique's order, without its fixed cost
                got = self._walk(idx, int(key), start, now, k)
                if len(got):
                    parts.append(got)
        if not parts:
            return np.zeros(0, dtype=np.int64)
        if len(parts) == 1:
            return parts[0]
        rows = sorted_unique(*parts)
        order = np.lexsort((rows, -self.published_at[rows]))[:k]
        return rows[order]

    def _walk(self, idx: TimeIndex, key: int, start: float, end: float, k: int) -> np.ndarray:
        """The first ``k`` live rows of ``key`` in [start, end], newest first."""
        a, b, idx_rows = idx.window(key, start, end)
        got: list[np.ndarray] = []
        n = 0
        step = max(2 * k, 64)
        while b > a and n < k:
            lo = max(a, b - step)
            chunk = idx_rows[lo:b][::-1]
            if self.always_live:
                live = chunk
            else:
                live = chunk[self.mask(chunk, end)]
            got.append(live[: k - n])
            n += len(got[-1])
            b = lo
            step *= 2
        if not got:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(got) if len(got) > 1 else got[0]
