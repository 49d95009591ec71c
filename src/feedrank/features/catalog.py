"""The item catalogue as aligned arrays: what towers and rankers read per item index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from feedrank.errors import NotFound
from feedrank.features.vocab import Vocab, hash_ids, hashed_bag_of_words
from feedrank.types import Item

UNKNOWN_AGE_S = 365 * 86400.0


@dataclass
class ItemCatalog:
    """Items by dense index ``0..N-1``; all arrays are (N,) unless stated.

    ``text_tokens``/``text_offsets`` are the EmbeddingBag inputs for titles.
    """

    item_ids: np.ndarray          # object (N,)
    titles: np.ndarray            # object (N,)
    categories: np.ndarray        # object (N,) raw strings
    creators: np.ndarray          # object (N,) raw strings
    creator_groups: np.ndarray    # object (N,) e.g. "new" / "established"; "unknown" if absent
    cat_idx: np.ndarray           # int64 (N,) vocab index
    sub_idx: np.ndarray           # int64 (N,)
    creator_hash: np.ndarray      # int64 (N,)
    id_hash: np.ndarray           # int64 (N,)
    published_at: np.ndarray      # float64 (N,) epoch seconds, NaN unknown
    text_tokens: np.ndarray       # int64 (T,)
    text_offsets: np.ndarray      # int64 (N,)
    index: dict[str, int]

    @classmethod
    def build(
        cls,
        items: pd.DataFrame,
        vocabs: dict[str, Vocab],
        id_buckets: int,
        text_buckets: int,
    ) -> ItemCatalog:
        ids = items["item_id"].astype(str).to_numpy(dtype=object)
        titles = items["title"].fillna("").astype(str).to_numpy(dtype=object)
        cats = items["category"].fillna("unknown").astype(str).to_numpy(dtype=object)
        subs = items["subcategory"].fillna("unknown").astype(str).to_numpy(dtype=object)
        creators = items["creator"].fillna("unknown").astype(str).to_numpy(dtype=object)
        tokens, offsets = hashed_bag_of_words(list(titles), text_buckets)
        return cls(
            item_ids=ids,
            titles=titles,
            categories=cats,
            creators=creators,
            creator_groups=(items["creator_group"].fillna("unknown").astype(str) if "creator_group" in items.columns
                            else pd.Series(["unknown"] * len(items))).to_numpy(dtype=object),
            cat_idx=vocabs["category"].lookup(cats),
            sub_idx=vocabs["subcategory"].lookup(subs),
            creator_hash=hash_ids(creators, id_buckets, salt="c:"),
            id_hash=hash_ids(ids, id_buckets, salt="i:"),
            published_at=pd.to_numeric(items["published_at"], errors="coerce").to_numpy(dtype=np.float64),
            text_tokens=tokens,
            text_offsets=offsets,
            index={iid: i for i, iid in enumerate(ids)},
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def indices(self, item_ids: np.ndarray | list[str], missing: int = -1) -> np.ndarray:
        """(N,) int64 dense indices, ``missing`` for unknown ids."""
        get = self.index.get
        return np.fromiter((get(str(i), missing) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def require(self, item_id: str) -> int:
        idx = self.index.get(item_id)
        if idx is None:
            raise NotFound(f"unknown item {item_id!r}")
        return idx

    def item(self, idx: int) -> Item:
        pub = self.published_at[idx]
        return Item(
            item_id=str(self.item_ids[idx]),
            title=str(self.titles[idx]),
            category=str(self.categories[idx]),
            subcategory="",
            creator=str(self.creators[idx]),
            published_at=None if np.isnan(pub) else float(pub),
        )

    def age_seconds(self, idx: np.ndarray, now: np.ndarray | float) -> np.ndarray:
        """(N,) float64 age at ``now``; unknown publish time counts as a year old; >= 0."""
        pub = self.published_at[idx]
        age = np.asarray(now, dtype=np.float64) - pub
        age = np.where(np.isnan(age), UNKNOWN_AGE_S, age)
        return np.maximum(age, 0.0)

    def text_bag(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """EmbeddingBag inputs (tokens, offsets) for a subset of items."""
        starts = self.text_offsets[idx]
        ends = np.append(self.text_offsets[1:], len(self.text_tokens))[idx]
        lengths = ends - starts
        total = int(lengths.sum())
        offsets = np.zeros(len(idx), dtype=np.int64)
        if len(idx):
            offsets[1:] = np.cumsum(lengths)[:-1]
        flat = np.repeat(starts - offsets, lengths) + np.arange(total)
        return self.text_tokens[flat], offsets
