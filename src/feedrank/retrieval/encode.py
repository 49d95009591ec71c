"""Turning catalogue arrays and histories into tower inputs, and encoding in batches."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import category_affinity
from feedrank.retrieval.two_tower import TwoTower, context_features


def item_inputs(catalog: ItemCatalog, idx: np.ndarray, model: TwoTower | None = None) -> tuple[torch.Tensor | None, ...]:
    """Item-tower inputs for catalogue indices ``idx`` (B,): six tensors plus the content
    rows (B, Dc) float32 from ``model.content`` (None when the model has no content input)."""
    tokens, offsets = catalog.text_bag(idx)
    content = None
    if model is not None and model.dims.content_dim:
        content = model.content[torch.from_numpy(np.asarray(idx, dtype=np.int64))]
    return (
        torch.from_numpy(catalog.id_hash[idx]),
        torch.from_numpy(catalog.cat_idx[idx]),
        torch.from_numpy(catalog.sub_idx[idx]),
        torch.from_numpy(catalog.creator_hash[idx]),
        torch.from_numpy(tokens),
        torch.from_numpy(offsets),
        content,
    )


def item_vectors_of(model: TwoTower, catalog: ItemCatalog, idx: np.ndarray) -> torch.Tensor:
    """(B, D) item-tower vectors for catalogue indices ``idx`` (B,) (grad flows when enabled)."""
    return model.item(*item_inputs(catalog, idx, model))


def user_vectors(model: TwoTower, catalog: ItemCatalog, histories: np.ndarray, ts: np.ndarray,
                 item_vecs: torch.Tensor | np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """User vectors for histories (B, L) item indices (-1 pad, most recent last) at ts (B,).

    ``item_vecs`` (N, D): precomputed item vectors to read history items from (serving);
    without it the item tower runs on the history items (training, so gradients flow).
    Returns ((B, D) float32 unit vectors, (B, C) float32 category affinities)."""
    histories = np.asarray(histories, dtype=np.int64)
    b, length = histories.shape
    valid = histories >= 0
    safe = np.where(valid, histories, 0)
    flat = np.flatnonzero(valid.ravel())
    hist_vec = torch.zeros((b * length, model.dims.out_dim), dtype=torch.float32)
    if len(flat):
        rows = safe.ravel()[flat]
        if item_vecs is None:  # run the item tower once per distinct history item
            uniq, inv = np.unique(rows, return_inverse=True)
            # F.embedding: its CPU backward sums duplicates in a fixed order (deterministic)
            got = F.embedding(torch.from_numpy(inv.reshape(-1)), item_vectors_of(model, catalog, uniq))
        elif isinstance(item_vecs, np.ndarray):
            got = torch.from_numpy(item_vecs[rows])
        else:
            got = item_vecs[torch.from_numpy(rows)]
        hist_vec = hist_vec.index_copy(0, torch.from_numpy(flat), got)
    hist_vec = hist_vec.view(b, length, -1)
    hist_cat = np.where(valid, catalog.cat_idx[safe], 0)
    aff = category_affinity(histories, catalog.cat_idx, model.dims.n_categories)
    ctx = context_features(torch.from_numpy(np.asarray(ts, dtype=np.float64)))
    u = model.user(hist_vec, torch.from_numpy(hist_cat), torch.from_numpy(aff), ctx)
    return u, aff


@torch.no_grad()
def encode_items(model: TwoTower, catalog: ItemCatalog, idx: np.ndarray | None = None, batch_size: int = 8192) -> np.ndarray:
    """(N, out_dim) float32 unit vectors for catalogue indices (all items by default)."""
    model.eval()
    if idx is None:
        idx = np.arange(len(catalog))
    out = np.zeros((len(idx), model.dims.out_dim), dtype=np.float32)
    for s in range(0, len(idx), batch_size):
        part = idx[s : s + batch_size]
        out[s : s + len(part)] = item_vectors_of(model, catalog, part).numpy()
    return out


@torch.no_grad()
def encode_users(model: TwoTower, catalog: ItemCatalog, histories: np.ndarray, ts: np.ndarray, batch_size: int = 4096,
                 item_vecs: np.ndarray | None = None) -> np.ndarray:
    """(B, out_dim) float32 unit vectors for users given their histories (B, L) at times ``ts``.
    ``item_vecs`` (N, D) reuses precomputed item vectors (else they are encoded once here)."""
    model.eval()
    if item_vecs is None:
        item_vecs = encode_items(model, catalog)
    out = np.zeros((len(histories), model.dims.out_dim), dtype=np.float32)
    for s in range(0, len(histories), batch_size):
        e = s + batch_size
        u, _ = user_vectors(model, catalog, histories[s:e], ts[s:e], item_vecs)
        out[s : s + len(histories[s:e])] = u.numpy()
    return out
