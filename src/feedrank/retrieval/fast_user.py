"""The user tower for one serving request, in numpy, exported from the torch model at load.

    tower = NumpyUserTower(model)                       # once, when the bundle loads
    u, aff = tower(histories, ts, catalog.cat_idx, item_vectors)   # per request

Same maths as ``retrieval.encode.user_vectors`` with precomputed item vectors (and
``UserTower.forward`` / ``two_tower.context_features``), equal to it within float32
rounding (``tests/unit/serving/test_numpy_paths.py``). A batch-1 query through torch is
~20 small ops at several microseconds of dispatch each; here it is a handful of numpy
calls. Training keeps the torch model.
"""

from __future__ import annotations

import numpy as np
import torch

from feedrank.features.history import category_affinity
from feedrank.retrieval.two_tower import TwoTower


def context_features_np(ts: np.ndarray) -> np.ndarray:
    """(B,) float64 epoch seconds -> (B, 4) float32 [sin, cos hour; sin, cos weekday]."""
    ts = np.asarray(ts, dtype=np.float64)
    hours = np.remainder(ts / 3600.0, 24.0)
    days = np.remainder(ts / 86400.0 + 3.0, 7.0)  # 1970-01-01 was a Thursday
    a, b = 2 * np.pi * hours / 24, 2 * np.pi * days / 7
    return np.stack([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=-1).astype(np.float32)


class NumpyUserTower:
    """Float32 numpy copy of a ``TwoTower``'s user tower (weights read once, never written)."""

    def __init__(self, model: TwoTower) -> None:
        def arr(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)

        ut = model.user
        lin = [m for m in ut.mlp if isinstance(m, torch.nn.Linear)]
        if len(lin) != 2 or len(ut.mlp) != 3:
            raise TypeError("expected the user tower MLP Linear-ReLU-Linear")
        self.n_categories = model.dims.n_categories
        self.recency = arr(ut.recency)                       # (L,)
        self.attn_w = arr(ut.attn.weight[0])                 # (D,)
        self.attn_b = float(ut.attn.bias.detach()[0])
        self.cat_emb = arr(ut.cat_emb.weight)                # (C, E)
        self.w1, self.b1 = arr(lin[0].weight).T.copy(), arr(lin[0].bias)   # (in, H), (H,)
        self.w2, self.b2 = arr(lin[1].weight).T.copy(), arr(lin[1].bias)   # (H, D), (D,)
        self.skip = float(ut.skip.detach())

    def __call__(self, histories: np.ndarray, ts: np.ndarray, cat_idx: np.ndarray,
                 item_vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """histories (B, L) catalogue rows (-1 pad, most recent last), ts (B,) epoch s,
        cat_idx (N,) category index per catalogue row, item_vecs (N, D) float32.
        Returns ((B, D) float32 unit vectors, (B, C) float32 category affinities)."""
        histories = np.asarray(histories, dtype=np.int64)
        if histories.shape[0] == 1:
            return self._one(histories, ts, cat_idx, item_vecs)
        return self._batch(histories, ts, cat_idx, item_vecs)

    def _batch(self, histories: np.ndarray, ts: np.ndarray, cat_idx: np.ndarray,
               item_vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``__call__`` for any batch size (the reference ``_one`` is tested against)."""
        histories = np.asarray(histories, dtype=np.int64)
        b, length = histories.shape
        valid = histories >= 0
        safe = np.where(valid, histories, 0)
        hist_vec = np.where(valid[..., None], item_vecs[safe], np.float32(0.0)).astype(np.float32, copy=False)  # (B, L, D)
        hist_cat = np.where(valid, cat_idx[safe], 0)
        aff = category_affinity(histories, cat_idx, self.n_categories)
        ctx = context_features_np(ts)
        mask = np.abs(hist_vec).sum(-1) > 0                                     # (B, L)
        logits = self.recency[None, -length:] + hist_vec @ self.attn_w + np.float32(self.attn_b)
        logits = np.where(mask, logits, np.float32(-1e9))
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        w = (e / e.sum(axis=1, keepdims=True)) * mask                           # (B, L)
        w = w.astype(np.float32, copy=False)
        pooled = np.einsum("bl,bld->bd", w, hist_vec)
        pooled_cat = np.einsum("bl,ble->be", w, self.cat_emb[hist_cat])
        n_hist = np.log1p(mask.sum(1, keepdims=True).astype(np.float32))
        x = np.concatenate([pooled, pooled_cat, np.asarray(aff, dtype=np.float32), ctx, n_hist], axis=1)
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        u = np.float32(self.skip) * pooled + (h @ self.w2 + self.b2)
        norm = np.maximum(np.linalg.norm(u, axis=1, keepdims=True), np.float32(1e-12))  # F.normalize's eps
        return (u / norm).astype(np.float32, copy=False), aff


    def _one(self, histories: np.ndarray, ts: np.ndarray, cat_idx: np.ndarray,
             item_vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``__call__`` for one history (a serving request), the same operations on the same
        (1, ...) shapes, minus the work a batch of one does not need: the history's rows,
        categories and counts are gathered once (``category_affinity`` would gather them
        again; its counts are small integers, exact in float32 either way), and padding is
        zeroed in place. Bitwise equal to the batch path (tested)."""
        h = histories[0]
        valid = h >= 0
        safe = h.clip(min=0)
        hist_vec = item_vecs[safe].astype(np.float32, copy=False)           # (L, D), a fresh gather
        cats = cat_idx[safe]
        if not valid.all():
            hist_vec[~valid] = 0.0
            cats[~valid] = 0
        hist_vec = hist_vec[None]                                           # (1, L, D)
        c = self.n_categories
        counts = np.bincount(cats[valid], minlength=c).astype(np.float32)[None, :]
        aff = (counts + 1.0 / c) / (counts.sum(axis=1, keepdims=True) + 1.0)  # category_affinity, smoothing 1
        ctx = context_features_np(ts)
        mask = np.abs(hist_vec).sum(-1) > 0                                 # (1, L)
        logits = self.recency[None, -len(h):] + hist_vec @ self.attn_w + np.float32(self.attn_b)
        logits = np.where(mask, logits, np.float32(-1e9))
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        w = (e / e.sum(axis=1, keepdims=True)) * mask
        w = w.astype(np.float32, copy=False)
        pooled = np.einsum("bl,bld->bd", w, hist_vec)
        pooled_cat = np.einsum("bl,ble->be", w, self.cat_emb[cats][None])
        n_hist = np.log1p(mask.sum(1, keepdims=True).astype(np.float32))
        x = np.concatenate([pooled, pooled_cat, aff, ctx, n_hist], axis=1)
        hid = x @ self.w1
        hid += self.b1
        np.maximum(hid, 0.0, out=hid)
        u = np.float32(self.skip) * pooled + (hid @ self.w2 + self.b2)
        norm = np.maximum(np.linalg.norm(u, axis=1, keepdims=True), np.float32(1e-12))
        return (u / norm).astype(np.float32, copy=False), aff


def numpy_user_tower(model: TwoTower) -> NumpyUserTower | None:
    """The numpy form, or None for a user tower of another shape (torch is used then)."""
    try:
        return NumpyUserTower(model)
    except (TypeError, AttributeError):
        return None
