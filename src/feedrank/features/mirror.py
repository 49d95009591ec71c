"""The live features in shared memory: one writer (the node's consumer process), many
readers (the serving workers), no lock between them.

    w = MirrorWriter.create("/dev/shm/feedrank-x/features.mirror", item_names, max_items=200_000,
                            max_users=200_000)
    w.put_item_table(ids, names, table, ts)      # the StorePublisher's writes (it is its store)
    w.put_user("u1", {"n_clicks": 3.0, "c0": 1.2e14, "aff:tech": 0.5}, ts)
    w.put_items({STREAM_KEY: {"heartbeat": t, "stream_now": s}}, ts)
    w.set_hot(["n7", "n3"]); w.set_stats(applied=10, errors=0)
    r = MirrorReader("/dev/shm/feedrank-x/features.mirror")   # read-only map; remaps a new file
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
* items: open addressing on a 64-bit key (``item_key``: the 48-bit ``item_hash`` of the id
  with bit 62 set; 0 = empty slot), one row of ``3 + K`` 8-byte words per slot: key, seq,
  ts, K values (a lookup touches one or two cache lines, not one per array);
* users: the same on ``user_key`` (blake2b-64 of the id), with ``n`` fields per record as
  (u16 name id, float64 value) pairs, at most ``user_fields`` of them.

Consistency: each slot has a sequence number the writer makes odd while it writes the
slot and even after; a reader copies the slot and keeps it only if the number was even and
unchanged (else it retries, then reports the slot missing). Keys never move while a table
is in use: when a table is over ``LOAD_MAX`` full, the writer rebuilds it with the newest
records only, under the table's generation number (odd while rebuilding); a reader that
sees the generation change retries, then reports misses. Missing is never an error here:
the request path serves its defaults (features/live.py).

A record of more than ``user_fields`` fields keeps ``n_clicks``, the history and the
largest category shares (the rest counted in ``truncated``). Sizes at the defaults
(200,000 items and users): items 512 Ki slots x 72 B = 36 MiB, users 512 Ki slots x 1 KiB
= 512 MiB, both sparse files in ``/dev/shm`` (tmpfs): only touched pages take memory.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from feedrank.features.live_io import STREAM_KEY, item_hash
from feedrank.features.store.protocol import FeatureBatch, Record, check_features, check_table

MAGIC = b"FRMIRR02"
HEADER = 1 << 20
LAYOUT_AT, LAYOUT_MAX = 16, 60_000
COUNTERS_AT, N_COUNTERS = 64 * 1024, 64
NAMES_AT, NAME_BYTES, MAX_NAMES = 128 * 1024, 64, 4096          # 256 KiB
HOT_AT, HOT_MAX = 384 * 1024, 512 * 1024                         # seq, length, JSON bytes
LOAD_MAX, LOAD_KEEP = 0.6, 0.3
KEY_BIT = np.int64(1 << 62)
RETRIES = 4

# counter slots (int64 view unless noted)
C_ITEM_GEN, C_USER_GEN, C_APPLIED, C_ERRORS, C_PID, C_NAMES, C_ITEMS, C_USERS = range(8)
C_TRUNCATED, C_EVICTED, C_HOT_SEQ, C_HOT_LEN, C_OPENED = 8, 9, 10, 11, 12
F_HEARTBEAT, F_STREAM_NOW, F_BEAT_TS = 32, 33, 34               # float64 view


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


class _Table:
    """Open addressing (linear probing) over numpy views: ``keys`` (cap,) int64,
    ``seq`` (cap,) int64, ``ts`` (cap,) float64, plus the caller's value arrays."""

    def __init__(self, keys: np.ndarray, seq: np.ndarray, ts: np.ndarray) -> None:
        self.keys, self.seq, self.ts = keys, seq, ts
        self.mask = len(keys) - 1

    def find(self, want: np.ndarray) -> np.ndarray:
        """Slot of each key, -1 where absent: vectorised probing while many keys are still
        probing, then one key at a time (``find_one``) for the few long probe runs."""
        n = len(want)
        out = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return out
        pos = want & self.mask
        todo = np.arange(n)
        for _ in range(len(self.keys)):
            k = self.keys[pos]
            hit = k == want[todo]
            out[todo[hit]] = pos[hit]
            go = ~hit & (k != 0)
            if not go.any():
                break
            todo, pos = todo[go], (pos[go] + 1) & self.mask
            if len(todo) <= 8:
                for i, p in zip(todo.tolist(), pos.tolist()):
                    out[i] = self.find_one(int(want[i]), p)
                break
        return out

    def find_one(self, key: int, pos: int | None = None) -> int:
        """The slot of one key (-1: absent), probing from ``pos`` (default: its home slot)."""
        keys, mask = self.keys, self.mask
        p = key & mask if pos is None else pos
        for _ in range(len(keys)):
            k = int(keys[p])
            if k == key:
                return p
            if k == 0:
                return -1
            p = (p + 1) & mask
        return -1

    def claim(self, want: np.ndarray) -> np.ndarray:
        """Slots for keys not in the table (distinct): the first empty slot of each probe
        sequence. The key is written by the caller last, after the slot's values."""
        n = len(want)
        out = np.full(n, -1, dtype=np.int64)
        pos = want & self.mask
        todo = np.arange(n)
        taken: set[int] = set()
        for _ in range(len(self.keys)):
            if not len(todo):
                break
            free = self.keys[pos] == 0
            # one key per free slot in this round; the others probe on
            _, first = np.unique(np.where(free, pos, -1 - np.arange(len(pos))), return_index=True)
            win = np.zeros(len(todo), dtype=bool)
            win[first] = True
            win &= free
            if taken:
                win &= ~np.isin(pos, np.fromiter(taken, dtype=np.int64))
            out[todo[win]] = pos[win]
            taken.update(pos[win].tolist())
            go = ~win
            todo, pos = todo[go], (pos[go] + 1) & self.mask
        return out

    def occupied(self) -> np.ndarray:
        return np.flatnonzero(self.keys != 0)


class _Mapped:
    """The file's arrays (shared by writer and reader)."""

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
            raise ValueError(f"feature mirror {path}: not a feature mirror (magic {bytes(self.mm[:8])!r})")
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

        # one row per item slot, key | seq | ts | values: a read touches one or two cache lines
        raw = self.item_rows = take(np.int64, (ci, 3 + k))
        flt = raw.view(np.float64)
        self.items = _Table(raw[:, 0], raw[:, 1], flt[:, 2])
        self.item_vals = flt[:, 3:]
        self.users = _Table(take(np.int64, (cu,)), take(np.int64, (cu,)), take(np.float64, (cu,)))
        self.user_n = take(np.int64, (cu,))
        self.user_ids = take(np.uint16, (cu, m))
        self.user_vals = take(np.float64, (cu, m))
        if at > len(buf):
            raise ValueError(f"feature mirror {path}: {len(buf)} bytes, its layout needs {at}")

    @staticmethod
    def size_of(n_names: int, cap_items: int, cap_users: int, user_fields: int) -> int:
        def r(x: int) -> int:
            return (x + 63) // 64 * 64
        return (HEADER + r(8 * cap_items * (3 + n_names)) + 4 * r(8 * cap_users)
                + r(2 * cap_users * user_fields) + r(8 * cap_users * user_fields))

    def close(self) -> None:
        for name in ("ci", "cf", "names_raw", "hot_raw", "items", "item_rows", "item_vals", "users", "user_n", "user_ids", "user_vals"):
            self.__dict__.pop(name, None)
        try:
            self.mm.close()
        except BufferError:  # a view still alive somewhere: the map goes with it
            pass


# ---------------------------------------------------------------------- writer


class MirrorWriter:
    """The one writer of a mirror file; a store for ``StorePublisher`` (``put_item_table``,
    ``put_items``, ``put_user``). Not thread-safe: one consumer thread writes."""

    def __init__(self, mapped: _Mapped) -> None:
        self.m = mapped
        self.url = f"mirror://{mapped.path}"
        self.ttl_s = 0.0
        self._col = {n: j for j, n in enumerate(mapped.item_names)}
        self._names = self._read_names()
        self._name_id = {n: i for i, n in enumerate(self._names)}
        self._keys: dict[str, int] = {}

    @classmethod
    def create(cls, path: str | Path, item_names: Sequence[str], *, max_items: int, max_users: int,
               user_fields: int = 96) -> "MirrorWriter":
        """A new, empty mirror at ``path`` (written aside, then renamed over any old one:
        readers of the old file remap when they see the new one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not 8 <= user_fields <= 4096:
            raise ValueError(f"user_fields must be in 8..4096, got {user_fields}")
        layout = {"version": 1, "item_names": list(item_names), "cap_items": _pow2(int(max_items / LOAD_MAX) + 1),
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

    # ------------------------------------------------------------------ names
    def _read_names(self) -> list[str]:
        n = int(self.m.ci[C_NAMES])
        raw = self.m.names_raw[: n * NAME_BYTES].tobytes()
        return [raw[i * NAME_BYTES:(i + 1) * NAME_BYTES].rstrip(b"\0").decode() for i in range(n)]

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
            if len(self._keys) > 4_000_000:
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
        t = self.m.items
        slots = t.find(keys)
        new = slots < 0
        if new.any():
            if int(self.m.ci[C_ITEMS]) + int(new.sum()) > LOAD_MAX * len(t.keys):
                self._rebuild_items(int(new.sum()))
                slots = t.find(keys)
                new = slots < 0
            slots[new] = t.claim(keys[new])
        src = [j for j, _ in cols]
        dst = [c for _, c in cols]
        t.seq[slots] += 1                          # odd: being written
        vals = self.m.item_vals
        if new.any():
            vals[slots[new]] = np.nan               # a reused slot's old columns are not this item's
        block = vals[slots]
        block[:, dst] = table[:, src]
        vals[slots] = block
        t.ts[slots] = ts
        t.keys[slots[new]] = keys[new]              # a new key becomes findable with its values in place
        t.seq[slots] += 1                          # even: consistent
        self.m.ci[C_ITEMS] += int(new.sum())

    def _rebuild_items(self, incoming: int) -> None:
        """Keep the newest ``LOAD_KEEP`` of the slots (fewer if ``incoming`` needs the room)."""
        m, t = self.m, self.m.items
        occ = t.occupied()
        keep_n = max(0, min(int(LOAD_KEEP * len(t.keys)), int(LOAD_MAX * len(t.keys)) - incoming))
        order = occ[np.argsort(-t.ts[occ], kind="stable")][:keep_n]
        keys, seqs, tss, vals = t.keys[order].copy(), t.seq[order].copy(), t.ts[order].copy(), m.item_vals[order].copy()
        m.ci[C_ITEM_GEN] += 1  # odd: readers retry, then miss
        t.keys[:] = 0
        slots = t.claim(keys)
        m.item_vals[slots], t.ts[slots], t.seq[slots] = vals, tss, seqs + 2
        t.keys[slots] = keys
        m.ci[C_ITEMS] = len(keys)
        m.ci[C_EVICTED] += len(occ) - len(keys)
        m.ci[C_ITEM_GEN] += 1

    # ------------------------------------------------------------------ users
    def put_user(self, user_id: str, features: Mapping[str, float], ts: float) -> None:
        rec = check_features(features)
        m = self.m
        fields = [(self._name(n), v) for n, v in rec.items()]
        fields = [(i, v) for i, v in fields if i is not None]
        lost = len(rec) - len(fields)
        if len(fields) > m.user_fields:  # keep n_clicks and history, then the largest shares
            names = self._names
            fields.sort(key=lambda f: (names[f[0]].startswith("aff:"), -f[1] if names[f[0]].startswith("aff:") else 0))
            lost += len(fields) - m.user_fields
            fields = fields[: m.user_fields]
        if lost:
            m.ci[C_TRUNCATED] += lost
        t = m.users
        key = np.asarray([user_key(str(user_id))], dtype=np.int64)
        slot = int(t.find(key)[0])
        new = slot < 0
        if new:
            if int(m.ci[C_USERS]) + 1 > LOAD_MAX * len(t.keys):
                self._rebuild_users()
            slot = int(t.claim(key)[0])
        t.seq[slot] += 1
        k = len(fields)
        if k:
            m.user_ids[slot, :k] = [i for i, _ in fields]
            m.user_vals[slot, :k] = [v for _, v in fields]
        m.user_n[slot] = k
        t.ts[slot] = float(ts)
        if new:
            t.keys[slot] = key[0]
            m.ci[C_USERS] += 1
        t.seq[slot] += 1

    def _rebuild_users(self) -> None:
        m, t = self.m, self.m.users
        occ = t.occupied()
        order = occ[np.argsort(-t.ts[occ], kind="stable")][: int(LOAD_KEEP * len(t.keys))]
        keys, seqs, tss = t.keys[order].copy(), t.seq[order].copy(), t.ts[order].copy()
        ns, ids, vals = m.user_n[order].copy(), m.user_ids[order].copy(), m.user_vals[order].copy()
        m.ci[C_USER_GEN] += 1
        t.keys[:] = 0
        slots = t.claim(keys)
        m.user_n[slots], m.user_ids[slots], m.user_vals[slots], t.ts[slots], t.seq[slots] = ns, ids, vals, tss, seqs + 2
        t.keys[slots] = keys
        m.ci[C_USERS] = len(keys)
        m.ci[C_EVICTED] += len(occ) - len(keys)
        m.ci[C_USER_GEN] += 1

    # ------------------------------------------------------------------ node state
    def heartbeat(self, wall: float | None, stream_now: float | None = None) -> None:
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

    def set_stats(self, applied: int, errors: int) -> None:
        self.m.ci[C_APPLIED], self.m.ci[C_ERRORS] = int(applied), int(errors)

    def close(self) -> None:
        self.m.close()


# ---------------------------------------------------------------------- reader


class MirrorReader:
    """Read-only view of a mirror file. Opens lazily and again when the file at ``path``
    is replaced (a restarted writer creates a new one); raises ``ConnectionError`` while
    there is none (the caller's guard then serves defaults)."""

    def __init__(self, path: str | Path, ttl_s: float = 7 * 86400.0, recheck_s: float = 0.5) -> None:
        self.path = Path(path)
        self.url = f"mirror://{self.path}"
        self.ttl_s = float(ttl_s)
        self.recheck_s = float(recheck_s)
        self.m: _Mapped | None = None
        self._checked = -np.inf
        self._names: list[str] = []
        self._hot: tuple[int, list[str]] = (-1, [])
        self._cols: dict[tuple, tuple[list[int], list[int]]] = {}
        self.torn = 0  # reads that gave up on a slot being rewritten (reported as missing)

    def _map(self) -> _Mapped:
        t = time.monotonic()
        if self.m is not None and t - self._checked < self.recheck_s:
            return self.m
        self._checked = t
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.m is not None:
                return self.m  # the writer is restarting: keep the last map until a new file appears
            raise ConnectionError(f"feature mirror {self.path} does not exist (is the node consumer running?)") from None
        if self.m is None or (st.st_dev, st.st_ino) != self.m.inode:
            old, self.m = self.m, _Mapped(self.path, writable=False)
            self._names, self._hot = [], (-1, [])
            if old is not None:
                old.close()
        return self.m

    def _user_names(self, m: _Mapped, need: int) -> list[str]:
        if need >= len(self._names):
            n = int(m.ci[C_NAMES])
            raw = m.names_raw[: n * NAME_BYTES].tobytes()
            self._names = [raw[i * NAME_BYTES:(i + 1) * NAME_BYTES].rstrip(b"\0").decode() for i in range(n)]
        return self._names

    # ------------------------------------------------------------------ users
    def get_user(self, user_id: str, now: float) -> Record | None:
        m = self._map()
        key = user_key(str(user_id))
        t = m.users
        for _ in range(RETRIES):
            g = int(m.ci[C_USER_GEN])
            if g % 2:
                time.sleep(0)
                continue
            slot = t.find_one(key)
            if slot < 0:
                if int(m.ci[C_USER_GEN]) == g:
                    return None
                continue  # the table was rebuilt meanwhile: look again
            s = int(t.seq[slot])
            n = int(m.user_n[slot])
            ids, vals, ts = m.user_ids[slot, :n].tolist(), m.user_vals[slot, :n].tolist(), float(t.ts[slot])
            if s % 2 == 0 and int(t.seq[slot]) == s and int(t.keys[slot]) == key and int(m.ci[C_USER_GEN]) == g:
                if self.ttl_s > 0 and now - ts > self.ttl_s:
                    return None
                names = self._user_names(m, max(ids) if ids else 0)
                return {names[i]: v for i, v in zip(ids, vals) if i < len(names)}
        self.torn += 1
        return None

    # ------------------------------------------------------------------ items
    def _columns(self, m: _Mapped, names: Sequence[str]) -> tuple[list[int], list[int]]:
        """(positions in ``names``, value columns in the slot rows) of the names the mirror has."""
        key = (id(m), tuple(names))
        got = self._cols.get(key)
        if got is None:
            col = {c: j for j, c in enumerate(m.item_names)}
            pairs = [(j, 3 + col[c]) for j, c in enumerate(names) if c in col]
            got = self._cols[key] = ([j for j, _ in pairs], [c for _, c in pairs])
        return got

    def get_keyed(self, keys: np.ndarray, names: Sequence[str], now: float) -> FeatureBatch:
        """Batched read of ``names`` for item ``keys`` (``item_keys`` / ``keys_from_hashes``);
        names the mirror does not carry are not present. One gather of the found slots' rows;
        a slot being rewritten is read again (``RETRIES`` times), then reported missing."""
        m = self._map()
        keys = np.asarray(keys, dtype=np.int64)
        n, f = len(keys), len(names)
        dst, cols = self._columns(m, names)
        values = np.full((n, f), np.nan)
        present = np.zeros((n, f), dtype=bool)
        found = np.zeros(n, dtype=bool)
        ts = np.full(n, np.nan)
        t, rows_of = m.items, m.item_rows
        for _ in range(RETRIES):
            g = int(m.ci[C_ITEM_GEN])
            if g % 2:
                time.sleep(0)
                continue
            slots = t.find(keys)
            hit = np.flatnonzero(slots >= 0)
            sl = slots[hit]
            rec = rows_of[sl]                       # (h, 3 + K) int64: key, seq, ts, values
            good = (rec[:, 0] == keys[hit]) & ((rec[:, 1] & 1) == 0) & (t.seq[sl] == rec[:, 1])
            for _ in range(RETRIES):
                if good.all():
                    break
                redo = np.flatnonzero(~good)        # slots being rewritten: read them again
                again = rows_of[sl[redo]]
                ok = (again[:, 0] == keys[hit[redo]]) & ((again[:, 1] & 1) == 0) & (t.seq[sl[redo]] == again[:, 1])
                rec[redo[ok]], good[redo[ok]] = again[ok], True
            if int(m.ci[C_ITEM_GEN]) != g:
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
    def heartbeat(self) -> float:
        return float(self._map().cf[F_HEARTBEAT])

    def stream_now(self) -> float:
        return float(self._map().cf[F_STREAM_NOW])

    def hot_items(self) -> list[str]:
        """The writer's latest hot list (cached until it changes)."""
        m = self._map()
        for _ in range(RETRIES):
            s = int(m.ci[C_HOT_SEQ])
            if s == self._hot[0]:
                return self._hot[1]
            if s % 2:
                continue
            raw = m.hot_raw[: int(m.ci[C_HOT_LEN])].tobytes()
            if int(m.ci[C_HOT_SEQ]) == s:
                try:
                    ids = json.loads(raw) if raw else []
                except ValueError:
                    ids = []
                self._hot = (s, ids)
                return ids
        return self._hot[1]

    def stats(self) -> dict[str, int | float]:
        m = self._map()
        c = m.ci
        return {"applied": int(c[C_APPLIED]), "errors": int(c[C_ERRORS]), "writer_pid": int(c[C_PID]),
                "items": int(c[C_ITEMS]), "users": int(c[C_USERS]), "cap_items": m.cap_items, "cap_users": m.cap_users,
                "truncated": int(c[C_TRUNCATED]), "evicted": int(c[C_EVICTED]), "torn_reads": self.torn,
                "heartbeat": float(m.cf[F_HEARTBEAT]), "stream_now": float(m.cf[F_STREAM_NOW])}

    def close(self) -> None:
        if self.m is not None:
            self.m.close()
            self.m = None


# ---------------------------------------------------------------------- a worker's store


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

    def hot_items(self) -> list[str]:
        return self.reader.hot_items()

    def stats(self) -> dict[str, int | float]:
        return self.reader.stats()

    def close(self) -> None:
        self.reader.close()
