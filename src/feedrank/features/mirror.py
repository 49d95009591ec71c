"""The live features in shared memory: one writer (the node's consumer process), many
readers (the serving workers), no lock between them.

    w = MirrorWriter.create("/dev/shm/feedrank-x/features.mirror", item_names, max_items=200_000,
                            max_users=200_000)
    w.put_item_table(ids, names, table, ts)      # the StorePublisher's writes (it is its store)
    w.put_user("u1", {"n_clicks": 3.0, "c0": 1.2e14, "aff:tech": 0.5}, ts)
    w.put_items({STREAM_KEY: {"heartbeat": t, "stream_now": s}}, ts)
    w.set_hot(["n7", "n3"]); w.set_stats(applied=10, errors=0)
    r = MirrorReader("/dev/shm/feedrank-x/features.mirror")   # features/mirror_reader.py
    r.get_user("u1", now)                        # {name: value} | None
    r.get_keyed(item_keys(["n7"]), names, now)   # FeatureBatch, vectorised

Why: with N workers each consuming every event (features/live.py), the node reads and
applies every event N times, and each worker's consumer thread holds that worker's GIL
while requests wait. One consumer process (serving/node_consumer.py) does it once and
publishes here; a worker's read is a few vectorised lookups.

Layout of the file (all little-endian, offsets in bytes):

* header (``HEADER`` bytes): magic, a JSON layout (capacities, item column names, user
  fields per record), a block of int64/float64 counters (generations, heartbeat, stream
  time, applied, errors, writer pid, ...), the user field-name table (``NAME_BYTES`` per
  name, append-only) and the hot-items list (JSON, under its own sequence number);
* items: two banks (one serving, one spare) of open addressing on a 64-bit key
  (``item_key``: the 48-bit ``item_hash`` of the id with bit 62 set; 0 = empty slot), one
  row of ``3 + K`` 8-byte words per slot: key, seq, ts, K values (a lookup touches one or
  two cache lines, not one per array);
* users: the same on ``user_key`` (blake2b-64 of the id), with ``n`` fields per record as
  (u16 name id, float64 value) pairs, at most ``user_fields`` of them.

Consistency: each slot has a sequence number the writer makes odd while it writes the
slot and even after; a reader reads the numbers, copies the slots, reads the numbers
again and keeps a slot only if its number was even and unchanged and its key is the one
asked for (else it reads again, then reports the slot missing). Keys never move in the
serving bank. When it is over ``LOAD_MAX`` of its slots full, the writer copies its newest
records, up to ``LOAD_KEEP`` of the slots (more than ``max_items`` / ``max_users``, what the
real-time state holds), into the spare bank (under the spare's generation number, odd
while it is written) and then makes the spare the serving bank: readers never see a table
being rebuilt. Sequence and generation numbers are set to absolute values (never
incremented), so an exception in the middle of a write cannot flip what parity means. Missing is never an error here: the request path serves its
defaults (features/live.py).

A user record of more than ``user_fields`` fields keeps its other fields, its newest
clicks (renumbered ``c0``.., oldest first, as the reader expects) and its largest category
shares; the fields left out are counted (``truncated``). A batch with more new items than
the table has room for (up to ``LOAD_MAX``) keeps what fits (the rest counted,
``dropped``). Sizes at the defaults (200,000 items and users, 3 windows): items 2 x 512 Ki
slots x 80 B = 80 MiB, users 2 x 512 Ki slots x ~1 KiB = ~1 GiB (``MirrorWriter.bytes_needed``),
a sparse file: only touched pages take memory (the spare bank's from its first rebuild).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from feedrank.features.live_io import STREAM_KEY, item_hash
from feedrank.features.open_table import OpenTable as _Table
from feedrank.features.store.protocol import Record, check_features, check_table

MAGIC = b"FRMIRR03"
HEADER = 1 << 20
LAYOUT_AT, LAYOUT_MAX = 16, 60_000
COUNTERS_AT, N_COUNTERS = 64 * 1024, 64
NAMES_AT, NAME_BYTES, MAX_NAMES = 128 * 1024, 64, 4096          # 256 KiB
HOT_AT, HOT_MAX = 384 * 1024, 512 * 1024                         # JSON bytes (length and seq in the counters)
LOAD_MAX, LOAD_KEEP = 0.6, 0.45  # a rebuild keeps up to 0.45 of the slots: more than max_items/max_users
KEY_BIT = np.int64(1 << 62)
RETRIES = 4
_HISTORY = re.compile(r"c(\d+)")

# counter slots (int64 view unless noted)
C_ITEM_ACTIVE, C_USER_ACTIVE, C_APPLIED, C_ERRORS, C_PID, C_NAMES, C_ITEMS, C_USERS = range(8)
C_TRUNCATED, C_EVICTED, C_HOT_SEQ, C_HOT_LEN, C_DROPPED, C_PUBLISH_ERRORS = 8, 9, 10, 11, 12, 13
C_ITEM_GEN, C_USER_GEN = (16, 17), (18, 19)                      # per bank: odd while it is written
F_HEARTBEAT, F_STREAM_NOW = 32, 33                               # float64 view


def item_key(item_id: str) -> int:
    """The mirror key of an item id (``item_hash`` with bit 62 set, so never 0)."""
    return int(item_hash(item_id)) | (1 << 62)


def item_keys(item_ids: Sequence[str]) -> np.ndarray:
    return np.fromiter((item_key(i) for i in item_ids), dtype=np.int64, count=len(item_ids))


def keys_from_hashes(hashes: Sequence[float]) -> np.ndarray:
    """Mirror keys from ``item_hash`` values (as ``CatalogBinding`` holds them)."""
    return np.asarray(hashes, dtype=np.float64).astype(np.int64) | KEY_BIT


def user_key(user_id: str) -> int:
    h = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "little")
    return (h & ((1 << 62) - 1)) | (1 << 62)


def _pow2(n: int) -> int:
    return 1 << max(4, int(np.ceil(np.log2(max(2, n)))))


class _ItemBank:
    """One item table: ``rows`` (cap, 3 + K) int64, key | seq | ts | K float64 values."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        flt = rows.view(np.float64)
        self.table = _Table(rows[:, 0], rows[:, 1], flt[:, 2])
        self.vals = flt[:, 3:]


class _UserBank:
    """One user table: keys, seq, ts, field count ``n``, (cap, M) name ids and values."""

    def __init__(self, keys: np.ndarray, seq: np.ndarray, ts: np.ndarray, n: np.ndarray, ids: np.ndarray,
                 vals: np.ndarray) -> None:
        self.table = _Table(keys, seq, ts)
        self.n, self.ids, self.vals = n, ids, vals


class _Mapped:
    """The file's arrays (shared by writer and reader), and a reader's caches of them."""

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            st = os.fstat(fd)
            self.inode = (st.st_dev, st.st_ino)
            if st.st_size < HEADER:
                raise ValueError(f"feature mirror {path}: {st.st_size} bytes, shorter than its header")
            self.mm = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if self.mm[:8] != MAGIC:
            raise ValueError(f"feature mirror {path}: not a feature mirror of this version (magic {bytes(self.mm[:8])!r})")
        size = int.from_bytes(self.mm[8:16], "little")
        try:
            self.layout = json.loads(bytes(self.mm[LAYOUT_AT:LAYOUT_AT + size]))
            self.item_names = tuple(self.layout["item_names"])
            self.cap_items, self.cap_users = int(self.layout["cap_items"]), int(self.layout["cap_users"])
            self.user_fields = int(self.layout["user_fields"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"feature mirror {path}: unreadable layout ({exc})") from exc
        buf = self.mm
        self.ci = np.frombuffer(buf, dtype=np.int64, count=N_COUNTERS, offset=COUNTERS_AT)
        self.cf = np.frombuffer(buf, dtype=np.float64, count=N_COUNTERS, offset=COUNTERS_AT)
        self.names_raw = np.frombuffer(buf, dtype=np.uint8, count=MAX_NAMES * NAME_BYTES, offset=NAMES_AT)
        self.hot_raw = np.frombuffer(buf, dtype=np.uint8, count=HOT_MAX, offset=HOT_AT)
        at = HEADER
        k, ci, cu, m = len(self.item_names), self.cap_items, self.cap_users, self.user_fields

        def take(dtype, shape) -> np.ndarray:
            nonlocal at
            count = int(np.prod(shape))
            a = np.frombuffer(buf, dtype=dtype, count=count, offset=at).reshape(shape)
            at += count * np.dtype(dtype).itemsize
            at = (at + 63) // 64 * 64
            return a

        self.item_banks = [_ItemBank(take(np.int64, (ci, 3 + k))) for _ in range(2)]
        self.user_banks = [_UserBank(take(np.int64, (cu,)), take(np.int64, (cu,)), take(np.float64, (cu,)),
                                     take(np.int64, (cu,)), take(np.uint16, (cu, m)), take(np.float64, (cu, m)))
                           for _ in range(2)]
        if at > len(buf):
            raise ValueError(f"feature mirror {path}: {len(buf)} bytes, its layout needs {at}")
        # a reader's caches, per map (a new file has its own names and columns)
        self.names: list[str] = []
        self.cols: dict[tuple[str, ...], tuple[list[int], list[int]]] = {}
        self.hot: tuple[int, list[str]] = (-1, [])

    @staticmethod
    def size_of(n_names: int, cap_items: int, cap_users: int, user_fields: int) -> int:
        def r(x: int) -> int:
            return (x + 63) // 64 * 64
        bank = r(8 * cap_items * (3 + n_names)) + 4 * r(8 * cap_users) + r(2 * cap_users * user_fields) \
            + r(8 * cap_users * user_fields)
        return HEADER + 2 * bank

    def item_bank(self) -> tuple[_ItemBank, int]:
        """The serving item bank and the counter slot of its generation."""
        a = int(self.ci[C_ITEM_ACTIVE]) & 1
        return self.item_banks[a], C_ITEM_GEN[a]

    def user_bank(self) -> tuple[_UserBank, int]:
        a = int(self.ci[C_USER_ACTIVE]) & 1
        return self.user_banks[a], C_USER_GEN[a]

    def read_names(self) -> list[str]:
        n = int(self.ci[C_NAMES])
        raw = self.names_raw[: n * NAME_BYTES].tobytes()
        return [raw[i * NAME_BYTES:(i + 1) * NAME_BYTES].rstrip(b"\0").decode() for i in range(n)]


# ---------------------------------------------------------------------- writer


class MirrorWriter:
    """The one writer of a mirror file; a store for ``StorePublisher`` (``put_item_table``,
    ``put_items``, ``put_user``). Not thread-safe: one consumer thread writes (the node's
    other thread only sets the hot list and the counters)."""

    KEY_CACHE = 500_000  # item id -> key entries kept (hashing an id costs ~1 us)

    def __init__(self, mapped: _Mapped) -> None:
        self.m = mapped
        self.url = f"mirror://{mapped.path}"
        self.ttl_s = 0.0
        self._col = {n: j for j, n in enumerate(mapped.item_names)}
        self._names = mapped.read_names()
        self._name_id = {n: i for i, n in enumerate(self._names)}
        self._keys: dict[str, int] = {}
        self.hold_heartbeat = False

    @classmethod
    def create(cls, path: str | Path, item_names: Sequence[str], *, max_items: int, max_users: int,
               user_fields: int = 96) -> "MirrorWriter":
        """A new, empty mirror at ``path`` (written aside, then renamed over any old one:
        readers of the old file remap when they see the new one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not 8 <= user_fields <= 4096:
            raise ValueError(f"user_fields must be in 8..4096, got {user_fields}")
        layout = {"version": 3, "item_names": list(item_names), "cap_items": _pow2(int(max_items / LOAD_MAX) + 1),
                  "cap_users": _pow2(int(max_users / LOAD_MAX) + 1), "user_fields": int(user_fields)}
        raw = json.dumps(layout).encode()
        if len(raw) > LAYOUT_MAX:
            raise ValueError(f"feature mirror layout too large ({len(raw)} bytes)")
        size = _Mapped.size_of(len(item_names), layout["cap_items"], layout["cap_users"], user_fields)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.truncate(size)  # sparse: pages take memory when first written
            f.seek(0)
            f.write(MAGIC + len(raw).to_bytes(8, "little"))
            f.seek(LAYOUT_AT)
            f.write(raw)
        m = _Mapped(tmp, writable=True)
        m.ci[C_PID] = os.getpid()
        m.cf[F_HEARTBEAT] = m.cf[F_STREAM_NOW] = -np.inf
        os.replace(tmp, path)
        m.path = path
        return cls(m)

    @staticmethod
    def bytes_needed(n_item_names: int, max_items: int, max_users: int, user_fields: int = 96) -> int:
        """The file size ``create`` makes (the most it can take in memory)."""
        return _Mapped.size_of(n_item_names, _pow2(int(max_items / LOAD_MAX) + 1), _pow2(int(max_users / LOAD_MAX) + 1),
                               user_fields)

    # ------------------------------------------------------------------ names
    def _name(self, name: str) -> int | None:
        i = self._name_id.get(name)
        if i is not None:
            return i
        b = name.encode()
        if len(b) >= NAME_BYTES or len(self._names) >= MAX_NAMES:
            return None
        i = len(self._names)
        self.m.names_raw[i * NAME_BYTES:i * NAME_BYTES + len(b)] = np.frombuffer(b, dtype=np.uint8)
        self._names.append(name)
        self._name_id[name] = i
        self.m.ci[C_NAMES] = i + 1  # after the bytes: a reader never sees a half-written name
        return i

    def _item_key(self, item_id: str) -> int:
        k = self._keys.get(item_id)
        if k is None:
            if len(self._keys) >= self.KEY_CACHE:
                self._keys.clear()
            k = self._keys[item_id] = item_key(item_id)
        return k

    # ------------------------------------------------------------------ items
    def put_item_table(self, item_ids: Sequence[str], names: Sequence[str], values: np.ndarray, ts: float,
                       extra: Mapping[str, Mapping[str, float]] | None = None) -> None:
        table = check_table(item_ids, names, values)
        cols = [(j, self._col[n]) for j, n in enumerate(names) if n in self._col]
        if len(item_ids) and cols:
            keys = np.fromiter((self._item_key(str(i)) for i in item_ids), dtype=np.int64, count=len(item_ids))
            keys, first = np.unique(keys, return_index=True)  # one write per item: its first row
            self._write_items(keys, table[first], cols, float(ts))
        if extra:
            self.put_items(extra, ts)

    def put_items(self, rows: Mapping[str, Mapping[str, float]], ts: float) -> None:
        for iid, rec in rows.items():
            rec = check_features(rec)
            if iid == STREAM_KEY:
                self.heartbeat(rec.get("heartbeat"), rec.get("stream_now"))
                continue
            cols = [(j, self._col[n]) for j, n in enumerate(rec) if n in self._col]
            if cols:
                self._write_items(np.asarray([self._item_key(str(iid))], dtype=np.int64),
                                  np.asarray([list(rec.values())], dtype=np.float64), cols, float(ts))

    def _write_items(self, keys: np.ndarray, table: np.ndarray, cols: list[tuple[int, int]], ts: float) -> None:
        m = self.m
        bank, _ = m.item_bank()
        slots = bank.table.find(keys)
        new = slots < 0
        n_new = int(new.sum())
        if n_new and int(m.ci[C_ITEMS]) + n_new > LOAD_MAX * len(bank.table.keys):
            bank = self._rebuild_items(n_new)
            slots = bank.table.find(keys)
            new = slots < 0
        room = int(LOAD_MAX * len(bank.table.keys)) - int(m.ci[C_ITEMS])
        if int(new.sum()) > room:  # more new items than the table has room for: keep what fits
            over = np.flatnonzero(new)[max(0, room):]
            keep = np.ones(len(keys), dtype=bool)
            keep[over] = False
            m.ci[C_DROPPED] += len(over)
            keys, table, slots, new = keys[keep], table[keep], slots[keep], new[keep]
        if new.any():
            slots[new] = bank.table.claim(keys[new])
        t = bank.table
        src = [j for j, _ in cols]
        dst = [c for _, c in cols]
        odd = t.seq[slots] | 1                     # absolute values: a slot's parity always means the same
        t.seq[slots] = odd                         # odd: being written
        if new.any():
            bank.vals[slots[new]] = np.nan          # a reused slot's old columns are not this item's
        block = bank.vals[slots]
        block[:, dst] = table[:, src]
        bank.vals[slots] = block
        t.ts[slots] = ts
        t.keys[slots[new]] = keys[new]              # a new key becomes findable with its values in place
        t.seq[slots] = odd + 1                     # even: consistent
        m.ci[C_ITEMS] += int(new.sum())

    def _into_spare(self, active: int, gens: tuple[int, int], count: int, fill: Callable[[int, int], tuple[int, int]]) -> int:
        """Rebuild into the spare bank and make it serve: ``fill(serving, spare)`` copies the
        records kept and returns (kept, occupied before), under the spare's generation
        number (odd meanwhile: a reader still in that bank from two rebuilds ago retries).
        Returns the new serving bank's index."""
        m = self.m
        a = int(m.ci[active]) & 1
        g = int(m.ci[gens[1 - a]]) | 1
        m.ci[gens[1 - a]] = g
        try:
            kept, occupied = fill(a, 1 - a)
        finally:
            m.ci[gens[1 - a]] = g + 1
        m.ci[active] = 1 - a
        m.ci[count] = kept
        m.ci[C_EVICTED] += occupied - kept
        return 1 - a

    def _rebuild_items(self, incoming: int) -> _ItemBank:
        """The serving bank's newest records, up to ``LOAD_KEEP`` of its slots (fewer if
        ``incoming`` needs the room), into the spare bank, which then serves; returns it."""
        banks = self.m.item_banks

        def fill(a: int, b: int) -> tuple[int, int]:
            src, dst = banks[a], banks[b]
            cap = len(src.table.keys)
            occ = src.table.occupied()
            keep_n = max(0, min(int(LOAD_KEEP * cap), int(LOAD_MAX * cap) - incoming))
            rows = src.rows[occ[np.argsort(-src.table.ts[occ], kind="stable")][:keep_n]].copy()
            rows[:, 1] = (rows[:, 1] | 1) + 1  # even, and unlike any number a reader of the old bank copied
            dst.table.keys[:] = 0
            dst.rows[dst.table.claim(rows[:, 0].copy())] = rows
            return len(rows), len(occ)

        return banks[self._into_spare(C_ITEM_ACTIVE, C_ITEM_GEN, C_ITEMS, fill)]

    # ------------------------------------------------------------------ users
    def _fit(self, rec: Record) -> Record:
        """``rec`` within ``user_fields``: its other fields, its newest clicks (renumbered
        from ``c0``, oldest first) and its largest category shares."""
        room = self.m.user_fields
        if len(rec) <= room:
            return rec
        hist, aff, other = [], [], []
        for name, v in rec.items():
            h = _HISTORY.fullmatch(name)
            if h:
                hist.append((int(h.group(1)), v))
            elif name.startswith("aff:"):
                aff.append((name, v))
            else:
                other.append((name, v))
        other = other[:room]
        room -= len(other)
        hist = [v for _, v in sorted(hist)][-room:] if room > 0 else []
        room -= len(hist)
        aff = sorted(aff, key=lambda f: -f[1])[:max(room, 0)]
        return {**dict(other), **{f"c{k}": v for k, v in enumerate(hist)}, **dict(aff)}

    def put_user(self, user_id: str, features: Mapping[str, float], ts: float) -> None:
        m = self.m
        ts = float(ts)  # everything that can raise before the slot is marked
        rec = check_features(features)
        fitted = self._fit(rec)
        fields = [(self._name(n), v) for n, v in fitted.items()]
        fields = [(i, v) for i, v in fields if i is not None]
        lost = len(rec) - len(fields)
        if lost:
            m.ci[C_TRUNCATED] += lost
        bank, _ = m.user_bank()
        key = user_key(str(user_id))
        slot = bank.table.find_one(key)
        new = slot < 0
        if new:
            if int(m.ci[C_USERS]) + 1 > LOAD_MAX * len(bank.table.keys):
                bank = self._rebuild_users()
            slot = int(bank.table.claim(np.asarray([key], dtype=np.int64))[0])
        t = bank.table
        odd = int(t.seq[slot]) | 1
        t.seq[slot] = odd
        k = len(fields)
        if k:
            bank.ids[slot, :k] = [i for i, _ in fields]
            bank.vals[slot, :k] = [v for _, v in fields]
        bank.n[slot] = k
        t.ts[slot] = ts
        if new:
            t.keys[slot] = key
            m.ci[C_USERS] += 1
        t.seq[slot] = odd + 1

    def _rebuild_users(self) -> _UserBank:
        banks = self.m.user_banks

        def fill(a: int, b: int) -> tuple[int, int]:
            src, dst = banks[a], banks[b]
            occ = src.table.occupied()
            order = occ[np.argsort(-src.table.ts[occ], kind="stable")][: int(LOAD_KEEP * len(src.table.keys))]
            keys = src.table.keys[order].copy()
            dst.table.keys[:] = 0
            slots = dst.table.claim(keys)
            dst.n[slots], dst.ids[slots], dst.vals[slots] = src.n[order], src.ids[order], src.vals[order]
            dst.table.ts[slots], dst.table.seq[slots] = src.table.ts[order], (src.table.seq[order] | 1) + 1
            dst.table.keys[slots] = keys
            return len(keys), len(occ)

        return banks[self._into_spare(C_USER_ACTIVE, C_USER_GEN, C_USERS, fill)]

    # ------------------------------------------------------------------ node state
    def heartbeat(self, wall: float | None, stream_now: float | None = None) -> None:
        """The stream's heartbeat (held back while ``hold_heartbeat``: a republish in
        progress is not yet the whole state, and a fresh heartbeat would say it is)."""
        if self.hold_heartbeat:
            return
        m = self.m
        if stream_now is not None:
            m.cf[F_STREAM_NOW] = float(stream_now)
        m.cf[F_HEARTBEAT] = float(time.time() if wall is None else wall)

    def set_hot(self, item_ids: Sequence[str]) -> None:
        """The node's hot items, most clicked first (``LiveFeatures.hot_items`` order)."""
        raw = json.dumps([str(i) for i in item_ids]).encode()
        while len(raw) > HOT_MAX:
            item_ids = list(item_ids)[: len(item_ids) // 2]
            raw = json.dumps([str(i) for i in item_ids]).encode()
        m = self.m
        m.ci[C_HOT_SEQ] += 1
        m.hot_raw[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        m.ci[C_HOT_LEN] = len(raw)
        m.ci[C_HOT_SEQ] += 1

    def set_stats(self, applied: int, errors: int, publish_errors: int = 0) -> None:
        self.m.ci[C_APPLIED], self.m.ci[C_ERRORS] = int(applied), int(errors)
        self.m.ci[C_PUBLISH_ERRORS] = int(publish_errors)

    def close(self) -> None:
        self.m = None  # the map goes when nothing holds a view of it
