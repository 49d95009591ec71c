"""The numpy user tower's batch-of-one path (every serving request) is bitwise equal to its
batch path, for cold users, partial and full histories, and rows with a zero vector."""

from __future__ import annotations

import numpy as np
import torch

from feedrank.retrieval.fast_user import NumpyUserTower
from feedrank.retrieval.two_tower import TwoTowerDims, build_two_tower


def _tower(seed: int = 11) -> NumpyUserTower:
    dims = TwoTowerDims(id_buckets=64, text_buckets=64, n_categories=6, n_subcategories=5, embed_dim=8, out_dim=16,
                        history_len=10)
    model = build_two_tower(dims)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return NumpyUserTower(model.eval())


def test_batch_of_one_equals_the_batch_path_bitwise():
    tower = _tower()
    rng = np.random.default_rng(3)
    n_items = 50
    item_vecs = rng.normal(size=(n_items, 16)).astype(np.float32)
    item_vecs[7] = 0.0                                   # an item without a vector: masked like padding
    cat_idx = rng.integers(0, 6, n_items)
    cases = [np.full(10, -1), np.r_[np.full(7, -1), [4, 9, 2]], rng.integers(0, n_items, 10), np.r_[np.full(9, -1), [7]],
             np.r_[np.full(5, -1), [7, 7, 3, 3, 3]]]
    cases += [np.where(rng.random(10) < 0.4, -1, rng.integers(0, n_items, 10)) for _ in range(30)]
    for i, h in enumerate(cases):
        hist = np.asarray(h, dtype=np.int64)[None, :]
        ts = np.array([1.7e9 + 3917.0 * i])
        u1, a1 = tower(hist, ts, cat_idx, item_vecs)
        u2, a2 = tower._batch(hist, ts, cat_idx, item_vecs)
        assert u1.dtype == u2.dtype == np.float32 and a1.dtype == a2.dtype == np.float32
        assert u1.shape == u2.shape == (1, 16) and a1.shape == a2.shape == (1, 6)
        np.testing.assert_array_equal(u1, u2, err_msg=f"case {i}")
        np.testing.assert_array_equal(a1, a2, err_msg=f"case {i}")
    assert np.isfinite(u1).all()


def test_a_batch_still_goes_through_the_batch_path():
    tower = _tower(5)
    rng = np.random.default_rng(0)
    item_vecs = rng.normal(size=(20, 16)).astype(np.float32)
    cat_idx = rng.integers(0, 6, 20)
    hist = rng.integers(-1, 20, (3, 10))
    ts = np.array([1.7e9, 1.71e9, 1.72e9])
    u, a = tower(hist, ts, cat_idx, item_vecs)
    for b in range(3):  # each row as a batch of one: the same vector up to float32 rounding
        ub, ab = tower(hist[b:b + 1], ts[b:b + 1], cat_idx, item_vecs)
        np.testing.assert_allclose(ub[0], u[b], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ab[0], a[b])
