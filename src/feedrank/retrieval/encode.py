"""Turning catalogue arrays and histories into tower inputs, and encoding in batches."""

from __future__ import annotations

import numpy as np
import torch

from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import category_affinity
from feedrank.retrieval.two_tower import TwoTower, context_features


def item_inputs(catalog: ItemCatalog, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Item-tower inputs for catalogue indices ``idx`` (B,)."""
    tokens, offsets = catalog.text_bag(idx)
    return (
        torch.from_numpy(catalog.id_hash[idx]),
        torch.from_numpy(catalog.cat_idx[idx]),
        torch.from_numpy(catalog.sub_idx[idx]),
        torch.from_numpy(catalog.creator_hash[idx]),
        torch.from_numpy(tokens),
        torch.from_numpy(offsets),
    )


def user_inputs(catalog: ItemCatalog, histories: np.ndarray, ts: np.ndarray, n_categories: int) -> tuple[torch.Tensor, ...]:
    """User-tower inputs: histories (B, L) item indices (-1 pad), ts (B,) epoch seconds."""
    valid = histories >= 0
    safe = np.where(valid, histories, 0)
    hist_id = np.where(valid, catalog.id_hash[safe], 0)
    hist_cat = np.where(valid, catalog.cat_idx[safe], 0)
    aff = category_affinity(histories, catalog.cat_idx, n_categories)
    return (
        torch.from_numpy(hist_id),
        torch.from_numpy(hist_cat),
        torch.from_numpy(aff),
        context_features(torch.from_numpy(np.asarray(ts, dtype=np.float64))),
    )


@torch.no_grad()
def encode_items(model: TwoTower, catalog: ItemCatalog, idx: np.ndarray | None = None, batch_size: int = 8192) -> np.ndarray:
    """(N, out_dim) float32 unit vectors for catalogue indices (all items by default)."""
    model.eval()
    if idx is None:
        idx = np.arange(len(catalog))
    out = np.zeros((len(idx), model.dims.out_dim), dtype=np.float32)
    for s in range(0, len(idx), batch_size):
        part = idx[s : s + batch_size]
        out[s : s + len(part)] = model.item(*item_inputs(catalog, part)).numpy()
    return out


@torch.no_grad()
def encode_users(model: TwoTower, catalog: ItemCatalog, histories: np.ndarray, ts: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """(B, out_dim) float32 unit vectors for users given their histories at times ``ts``."""
    model.eval()
    out = np.zeros((len(histories), model.dims.out_dim), dtype=np.float32)
    for s in range(0, len(histories), batch_size):
        e = s + batch_size
        out[s : s + len(histories[s:e])] = model.user(*user_inputs(catalog, histories[s:e], ts[s:e], model.dims.n_categories)).numpy()
    return out
