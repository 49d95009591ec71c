"""Stable id hashing, categorical vocabularies and title tokenisation.

Hashing is deterministic across processes and machines (SipHash with a fixed key via
``pandas.util.hash_array``), so a billion ids map into a bounded table without a
dictionary. Vocabularies are for small closed sets (categories); index 0 is "unknown".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

_HASH_KEY = "feedrank-ids-v01"  # 16 bytes: changing it invalidates every trained table
_TOKEN = re.compile(r"[a-z0-9]+")


def hash_ids(ids: Sequence[str] | np.ndarray, buckets: int, salt: str = "") -> np.ndarray:
    """Map string ids to ``[1, buckets)`` (0 is reserved for padding). Returns (N,) int64."""
    arr = np.asarray(ids, dtype=object)
    if salt:
        arr = np.array([salt + str(x) for x in arr], dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    h = pd.util.hash_array(arr, hash_key=_HASH_KEY, categorize=False)
    return (h % np.uint64(buckets - 1)).astype(np.int64) + 1


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall((text or "").lower())


def hashed_bag_of_words(titles: Sequence[str], buckets: int, max_tokens: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Titles -> (tokens, offsets) for ``nn.EmbeddingBag``: unigrams and bigrams hashed.

    Returns ``tokens`` (T,) int64 in [1, buckets) and ``offsets`` (N,) int64. A title with
    no tokens gets the single token 0 (the padding row, all zeros when trained as such).
    """
    all_tokens: list[str] = []
    lengths = np.zeros(len(titles), dtype=np.int64)
    for i, t in enumerate(titles):
        toks = tokenize(t)[:max_tokens]
        grams = toks + [a + "_" + b for a, b in zip(toks, toks[1:])]
        if not grams:
            grams = ["\x00"]
        all_tokens.extend(grams)
        lengths[i] = len(grams)
    hashed = hash_ids(np.array(all_tokens, dtype=object), buckets, salt="w:")
    empty_marker = np.array([tok == "\x00" for tok in all_tokens], dtype=bool)
    hashed[empty_marker] = 0
    offsets = np.zeros(len(titles), dtype=np.int64)
    if len(titles):
        offsets[1:] = np.cumsum(lengths)[:-1]
    return hashed, offsets


@dataclass(frozen=True)
class Vocab:
    """A closed vocabulary; index 0 means unknown/other."""

    name: str
    values: tuple[str, ...]

    @classmethod
    def build(cls, name: str, values: Iterable[str], max_size: int = 10_000, min_count: int = 1) -> Vocab:
        s = pd.Series(list(values), dtype=object).fillna("unknown").astype(str)
        counts = s.value_counts()
        counts = counts[counts >= min_count]
        kept = sorted(counts.index[:max_size].tolist())
        return cls(name=name, values=tuple(kept))

    def __len__(self) -> int:
        return len(self.values) + 1

    def lookup(self, values: Sequence[str] | np.ndarray) -> np.ndarray:
        """(N,) int64 indices, 0 for unknown values."""
        table = {v: i + 1 for i, v in enumerate(self.values)}
        return np.fromiter((table.get(str(v), 0) for v in values), dtype=np.int64, count=len(values))

    def to_json(self) -> dict:
        return {"name": self.name, "values": list(self.values)}

    @classmethod
    def from_json(cls, obj: dict) -> Vocab:
        return cls(name=str(obj["name"]), values=tuple(str(v) for v in obj["values"]))


def save_vocabs(path: Path, vocabs: dict[str, Vocab]) -> None:
    path.write_text(json.dumps({k: v.to_json() for k, v in vocabs.items()}, indent=1))


def load_vocabs(path: Path) -> dict[str, Vocab]:
    raw = json.loads(path.read_text())
    return {k: Vocab.from_json(v) for k, v in raw.items()}
