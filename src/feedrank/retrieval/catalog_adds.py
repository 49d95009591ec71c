"""Adding items to a live catalogue, model content table, vectors and ANN index without a
rebuild (``POST /v1/items``).

    rows = append_items(catalog, new_items_frame, vocabs, id_buckets, text_buckets)

A new item gets the next catalogue row. An update of a known item id also gets a new row
(its vector changes and HNSW cannot overwrite in place); the id then points to the new row
and the old row is reported back so that the caller excludes it from search.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from feedrank.features.catalog import ItemCatalog
from feedrank.features.vocab import Vocab


def append_items(catalog: ItemCatalog, items: pd.DataFrame, vocabs: dict[str, Vocab], id_buckets: int,
                 text_buckets: int) -> tuple[ItemCatalog, np.ndarray, np.ndarray]:
    """A new catalogue = ``catalog`` + ``items`` (columns item_id, title, category,
    subcategory, creator, published_at). Returns (catalogue, new rows (M,) int64, replaced
    old rows (R,) int64). The input catalogue is not modified (readers keep a consistent view)."""
    part = ItemCatalog.build(items, vocabs, id_buckets, text_buckets)
    n = len(catalog)
    rows = np.arange(n, n + len(part), dtype=np.int64)
    index = dict(catalog.index)
    replaced = [index[i] for i in part.item_ids.tolist() if i in index]
    for i, r in zip(part.item_ids.tolist(), rows.tolist()):
        index[i] = r
    fields = {}
    for f in dataclasses.fields(ItemCatalog):
        a, b = getattr(catalog, f.name), getattr(part, f.name)
        if f.name == "index":
            fields[f.name] = index
        elif f.name == "text_offsets":
            fields[f.name] = np.concatenate([a, b + len(catalog.text_tokens)])
        elif isinstance(a, np.ndarray):
            fields[f.name] = np.concatenate([a, b])
        else:
            fields[f.name] = a
    merged = ItemCatalog(**fields)
    return merged, rows, np.asarray(replaced, dtype=np.int64)


def items_frame(records: list[dict]) -> pd.DataFrame:
    """Validated item dicts -> the frame ``append_items`` reads (missing fields defaulted)."""
    df = pd.DataFrame.from_records(records, columns=["item_id", "title", "category", "subcategory", "creator", "published_at"])
    df["title"] = df["title"].fillna("")
    for c in ("category", "subcategory", "creator"):
        df[c] = df[c].astype(object).where(df[c].notna(), "unknown")
    df["published_at"] = pd.to_numeric(df["published_at"], errors="coerce")
    return df
