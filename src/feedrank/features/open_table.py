"""Open addressing with linear probing over numpy arrays that may live in shared memory
(the node consumer's mirror, features/mirror.py): vectorised lookups of many keys,
scalar lookups of one, and claims of empty slots for new keys. Keys are non-zero int64
(0 marks an empty slot) whose low bits are already well mixed (hashes); the arrays are
owned by the caller, which writes a claimed slot's values before its key.

    t = OpenTable(keys, seq, ts)        # views: (cap,) int64, int64, float64; cap a power of 2
    slots = t.find(want)                # (n,) slot per key, -1 where absent
    slot = t.find_one(key)
    new = t.claim(fresh)                # empty slots for keys not in the table (-1: full)
"""

from __future__ import annotations

import numpy as np


class OpenTable:
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
        sequence, -1 for keys that find none (a full table). The key is written by the
        caller last, after the slot's values."""
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
