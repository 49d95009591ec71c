"""Reading the node consumer's shared-memory mirror (layout and writer: features/mirror.py).

    r = MirrorReader("/dev/shm/feedrank-x/features.mirror")   # read-only map, opened lazily
    r.get_user("u1", now)                        # {name: value} | None
    r.get_keyed(item_keys(["n7"]), names, now)   # FeatureBatch, one vectorised lookup
    r.hot_items(); r.stats()
    store = MirrorStore(path)                     # what a serving worker's LiveFeatures reads

A reader maps the file read-only when first used and again when the file at its path is
replaced (a restarted node consumer writes a new one; checked every ``recheck_s``), under
a lock, so the request threads and the metrics thread share one map. An old map is not
closed by hand: it goes when no thread holds a view of it. Until a file exists every read
raises ``ConnectionError`` (the caller's guard serves defaults). A slot that stays
mid-write through ``RETRIES`` reads is reported missing and counted (``torn_reads``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from feedrank.features.live_io import STREAM_KEY
from feedrank.features.mirror import (C_APPLIED, C_DROPPED, C_ERRORS, C_EVICTED, C_HOT_LEN, C_HOT_SEQ, C_ITEMS, C_PID,
                                      C_PUBLISH_ERRORS, C_TRUNCATED, C_USERS, F_HEARTBEAT, F_STREAM_NOW, RETRIES,
                                      _Mapped, item_keys, user_key)
from feedrank.features.store.protocol import FeatureBatch, Record


def _serving(m: _Mapped, bank_of: Callable[[], tuple[Any, int]]) -> Iterator[tuple[Any, int, int]]:
    """Up to ``RETRIES`` times: (serving bank, its generation's counter slot, the generation),
    skipping a bank while it is being written (its generation odd)."""
    for _ in range(RETRIES):
        bank, gen = bank_of()
        g = int(m.ci[gen])
        if g % 2:
            time.sleep(0)
            continue
        yield bank, gen, g


class MirrorReader:
    """Read-only view of a mirror file (module docstring)."""

    def __init__(self, path: str | Path, ttl_s: float = 7 * 86400.0, recheck_s: float = 0.5) -> None:
        self.path = Path(path)
        self.url = f"mirror://{self.path}"
        self.ttl_s = float(ttl_s)
        self.recheck_s = float(recheck_s)
        self.m: _Mapped | None = None
        self._checked = -np.inf
        self._lock = threading.Lock()
        self.torn = 0  # slots given up on while being rewritten (reported as missing)

    def _map(self) -> _Mapped:
        m = self.m
        if m is not None and time.monotonic() - self._checked < self.recheck_s:
            return m
        with self._lock:
            t = time.monotonic()
            if self.m is not None and t - self._checked < self.recheck_s:
                return self.m
            self._checked = t
            try:
                st = self.path.stat()
            except FileNotFoundError:
                if self.m is not None:
                    return self.m  # the writer is restarting: the last map serves until a new file appears
                raise ConnectionError(f"feature mirror {self.path} does not exist (is the node consumer running?)") from None
            if self.m is None or (st.st_dev, st.st_ino) != self.m.inode:
                self.m = _Mapped(self.path, writable=False)  # the old one goes with its last view
            return self.m

    def item_names(self) -> tuple[str, ...]:
        """The item fields the mirror carries."""
        return self._map().item_names

    # ------------------------------------------------------------------ users
    def get_user(self, user_id: str, now: float) -> Record | None:
        m = self._map()
        key = user_key(str(user_id))
        for bank, gen, g in _serving(m, m.user_bank):
            t = bank.table
            slot = t.find_one(key)
            if slot < 0:
                if int(m.ci[gen]) == g:
                    return None
                continue  # the bank was rewritten meanwhile: look again
            s = int(t.seq[slot])
            n = int(bank.n[slot])
            ids, vals, ts = bank.ids[slot, :n].tolist(), bank.vals[slot, :n].tolist(), float(t.ts[slot])
            if s % 2 == 0 and int(t.seq[slot]) == s and int(t.keys[slot]) == key and int(m.ci[gen]) == g:
                if self.ttl_s > 0 and now - ts > self.ttl_s:
                    return None
                names = m.names if ids and max(ids) < len(m.names) else self._names(m)
                return {names[i]: v for i, v in zip(ids, vals) if i < len(names)}
        self.torn += 1
        return None

    def _names(self, m: _Mapped) -> list[str]:
        m.names = m.read_names()
        return m.names

    # ------------------------------------------------------------------ items
    def _columns(self, m: _Mapped, names: Sequence[str]) -> tuple[list[int], list[int]]:
        """(positions in ``names``, value columns in the slot rows) of the names the mirror has."""
        key = tuple(names)
        got = m.cols.get(key)
        if got is None:
            col = {c: j for j, c in enumerate(m.item_names)}
            pairs = [(j, 3 + col[c]) for j, c in enumerate(names) if c in col]
            got = m.cols[key] = ([j for j, _ in pairs], [c for _, c in pairs])
        return got

    def get_keyed(self, keys: np.ndarray, names: Sequence[str], now: float) -> FeatureBatch:
        """Batched read of ``names`` for item ``keys`` (``item_keys`` / ``keys_from_hashes``);
        names the mirror does not carry are not present. The slots' sequence numbers, one
        gather of their rows, the numbers again; a slot being rewritten is read again
        (``RETRIES`` times), then reported missing."""
        m = self._map()
        keys = np.asarray(keys, dtype=np.int64)
        n, f = len(keys), len(names)
        dst, cols = self._columns(m, names)
        values = np.full((n, f), np.nan)
        present = np.zeros((n, f), dtype=bool)
        found = np.zeros(n, dtype=bool)
        ts = np.full(n, np.nan)
        for bank, gen, g in _serving(m, m.item_bank):
            t, rows_of = bank.table, bank.rows
            slots = t.find(keys)
            hit = np.flatnonzero(slots >= 0)
            sl = slots[hit]
            s1 = t.seq[sl]
            rec = rows_of[sl]                       # (h, 3 + K) int64: key, seq, ts, values
            good = (s1 == t.seq[sl]) & ((s1 & 1) == 0) & (rec[:, 1] == s1) & (rec[:, 0] == keys[hit])
            for _ in range(RETRIES):
                if good.all():
                    break
                redo = np.flatnonzero(~good)        # slots being rewritten: read them again
                sr = sl[redo]
                s2 = t.seq[sr]
                again = rows_of[sr]
                ok = (s2 == t.seq[sr]) & ((s2 & 1) == 0) & (again[:, 1] == s2) & (again[:, 0] == keys[hit[redo]])
                rec[redo[ok]], good[redo[ok]] = again[ok], True
            if int(m.ci[gen]) != g:
                continue
            if not good.all():
                self.torn += int((~good).sum())
                hit, rec = hit[good], rec[good]
            flt = rec.view(np.float64)
            t_ = flt[:, 2]
            if self.ttl_s > 0:
                warm = ~(now - t_ > self.ttl_s)
                if not warm.all():
                    hit, flt, t_ = hit[warm], flt[warm], t_[warm]
            found[hit], ts[hit] = True, t_
            if cols:
                sub = flt[:, cols]
                if len(dst) == f:
                    values[hit], present[hit] = sub, ~np.isnan(sub)
                else:
                    values[hit[:, None], dst], present[hit[:, None], dst] = sub, ~np.isnan(sub)
            return FeatureBatch(values, found, ts, None, present)
        self.torn += n
        return FeatureBatch(values, found, ts, None, present)

    def get_items(self, item_ids: Sequence[str], names: Sequence[str], now: float) -> FeatureBatch:
        ids = [str(i) for i in item_ids]
        stream = [k for k, i in enumerate(ids) if i == STREAM_KEY]
        batch = self.get_keyed(item_keys(ids), names, now)
        if stream:
            m = self._map()
            rec = {"heartbeat": float(m.cf[F_HEARTBEAT]), "stream_now": float(m.cf[F_STREAM_NOW])}
            for k in stream:
                for j, name in enumerate(names):
                    v = rec.get(name)
                    if v is not None and np.isfinite(v):
                        batch.values[k, j], batch.present[k, j] = v, True
                batch.found[k] = bool(np.isfinite(rec["heartbeat"]))
                batch.ts[k] = rec["heartbeat"] if batch.found[k] else np.nan
        return batch

    # ------------------------------------------------------------------ node state
    def hot_items(self) -> list[str]:
        """The writer's latest hot list (cached until it changes)."""
        m = self._map()
        for _ in range(RETRIES):
            s = int(m.ci[C_HOT_SEQ])
            if s == m.hot[0]:
                return m.hot[1]
            if s % 2:
                continue
            raw = m.hot_raw[: int(m.ci[C_HOT_LEN])].tobytes()
            if int(m.ci[C_HOT_SEQ]) == s:
                try:
                    ids = json.loads(raw) if raw else []
                except ValueError:
                    ids = []
                m.hot = (s, ids)
                return ids
        return m.hot[1]

    def stats(self) -> dict[str, int | float]:
        m = self._map()
        c = m.ci
        return {"applied": int(c[C_APPLIED]), "errors": int(c[C_ERRORS]), "publish_errors": int(c[C_PUBLISH_ERRORS]),
                "writer_pid": int(c[C_PID]), "items": int(c[C_ITEMS]), "users": int(c[C_USERS]),
                "cap_items": m.cap_items, "cap_users": m.cap_users, "truncated": int(c[C_TRUNCATED]),
                "dropped": int(c[C_DROPPED]), "evicted": int(c[C_EVICTED]), "torn_reads": self.torn,
                "heartbeat": float(m.cf[F_HEARTBEAT]), "stream_now": float(m.cf[F_STREAM_NOW])}

    def close(self) -> None:
        self.m = None


class MirrorStore:
    """A serving worker's online store when the node consumer publishes the live features
    (``features.consumer = node``): a read-only ``MirrorReader`` with the calls
    ``LiveFeatures`` makes (``get_user``, ``get_items``, ``get_keyed``, ``hot_items``,
    ``stats``). Its records are the node's to write; ``LiveFeatures`` keeps the model's batch
    baselines on its catalogue rows instead of in the store."""

    def __init__(self, path: str | Path, ttl_s: float = 7 * 86400.0) -> None:
        self.reader = MirrorReader(path, ttl_s=ttl_s)
        self.url, self.ttl_s = self.reader.url, self.reader.ttl_s

    def _read_only(self, what: str):
        raise TypeError(f"feature mirror store {self.url}: {what} are the node consumer's to write")

    def put_items(self, rows: Mapping[str, Mapping[str, float]], ts: float) -> None:
        self._read_only("item records")

    def put_item_table(self, item_ids: Sequence[str], names: Sequence[str], values: np.ndarray, ts: float,
                       extra: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self._read_only("item records")

    def put_user(self, user_id: str, features: Mapping[str, float], ts: float) -> None:
        self._read_only("user records")

    def get_user(self, user_id: str, now: float) -> Record | None:
        return self.reader.get_user(user_id, now)

    def get_keyed(self, keys: np.ndarray, names: Sequence[str], now: float) -> FeatureBatch:
        return self.reader.get_keyed(keys, names, now)

    def get_items(self, item_ids: Sequence[str], names: Sequence[str], now: float) -> FeatureBatch:
        return self.reader.get_items(item_ids, names, now)

    def item_names(self) -> tuple[str, ...]:
        return self.reader.item_names()

    def hot_items(self) -> list[str]:
        return self.reader.hot_items()

    def stats(self) -> dict[str, int | float]:
        return self.reader.stats()

    def close(self) -> None:
        self.reader.close()
