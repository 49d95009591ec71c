"""The numpy serving paths (ranker, user tower) equal their torch models within 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feedrank.config import RankingConfig
from feedrank.features.history import category_affinity
from feedrank.ranking.compress import FusedMLP
from feedrank.ranking.features import N_FEATURES
from feedrank.ranking.model import build_ranker
from feedrank.ranking.runtime import NumpyRanker, RankerRuntime, to_numpy
from feedrank.retrieval.fast_user import NumpyUserTower, context_features_np
from feedrank.retrieval.two_tower import TwoTowerDims, build_two_tower, context_features

F = N_FEATURES  # the ranker input width (whatever features.py defines)


def _trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random non-trivial weights everywhere (incl. buffers), as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        if hasattr(model, "mean"):
            model.set_normalisation(torch.randn(F, generator=g), torch.rand(F, generator=g) + 0.5)
    return model.eval()


def _inputs(n: int, n_cat: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, F)).astype(np.float32) * 3
    dense[0, 0] = 1e6  # beyond the clamp
    return dense, rng.integers(0, n_cat, n)


@pytest.mark.parametrize("interaction,hidden", [("mlp", (64, 32)), ("mlp", (32,)), ("dcn", (32, 16)), ("dot", (32,))])
def test_numpy_ranker_matches_torch(interaction: str, hidden: tuple[int, ...]) -> None:
    model = _trained_like(build_ranker(12, hidden, interaction=interaction), seed=3)
    dense, cat = _inputs(500, 12)
    fast = NumpyRanker(model)
    with torch.inference_mode():
        z, ld = model.heads(torch.from_numpy(dense), torch.from_numpy(cat))
    fz, fld = fast.heads(dense, cat)
    np.testing.assert_allclose(fz, z.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fld, ld.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.logits(dense[:1], cat[:1]), z.numpy()[:1], rtol=1e-5, atol=1e-5)  # batch of one


def test_numpy_fused_mlp_matches_torch() -> None:
    fused = FusedMLP(_trained_like(build_ranker(7, (32,), interaction="mlp"), seed=5)).eval()
    dense, cat = _inputs(300, 7)
    with torch.inference_mode():
        z, ld = fused.heads(torch.from_numpy(dense), torch.from_numpy(cat))
    fz, fld = NumpyRanker(fused).heads(dense, cat)
    np.testing.assert_allclose(fz, z.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fld, ld.numpy(), rtol=1e-5, atol=1e-5)


def test_runtime_scores_use_numpy_and_match_torch() -> None:
    model = _trained_like(build_ranker(9, (32, 16)), seed=7)
    small = _trained_like(build_ranker(9, (16,)), seed=8)
    rt = RankerRuntime(model, small, mean_log_dwell=1.0)
    assert {"full", "distilled"} <= set(rt.fast)
    assert to_numpy(torch.nn.Linear(3, 1)) is None  # not a ranker: torch is used
    dense, cat = _inputs(200, 9)
    age = np.linspace(0, 86400, 200)
    cfg = RankingConfig(dwell_weight=0.5, freshness_tau_hours=12.0)
    for variant in ("full", "distilled"):
        fast = rt.score(variant, dense, cat, age, cfg)
        saved, rt.fast = rt.fast, {}
        slow = rt.score(variant, dense, cat, age, cfg)
        rt.fast = saved
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-7)
        assert np.array_equal(np.argsort(-fast)[:20], np.argsort(-slow)[:20])


def test_numpy_user_tower_matches_torch() -> None:
    dims = TwoTowerDims(id_buckets=64, text_buckets=64, n_categories=6, n_subcategories=5, embed_dim=8, out_dim=16,
                        history_len=10)
    model = _trained_like(build_two_tower(dims), seed=11)
    rng = np.random.default_rng(2)
    n_items = 40
    item_vecs = rng.normal(size=(n_items, 16)).astype(np.float32)
    cat_idx = rng.integers(1, 6, n_items)
    hist = np.full((4, 10), -1, dtype=np.int64)
    hist[0, -3:] = [4, 9, 2]
    hist[1, :] = rng.integers(0, n_items, 10)
    hist[3, -1] = 7                       # row 2 stays empty: a cold user
    ts = np.array([1.7e9, 1.7e9 + 3600 * 5, 1.7e9 + 86400 * 3.3, 1.6e9])
    np.testing.assert_allclose(context_features_np(ts), context_features(torch.from_numpy(ts)).numpy(), atol=1e-6)
    fast_u, fast_aff = NumpyUserTower(model)(hist, ts, cat_idx, item_vecs)

    valid = hist >= 0
    hist_vec = np.where(valid[..., None], item_vecs[np.where(valid, hist, 0)], 0).astype(np.float32)
    hist_cat = np.where(valid, cat_idx[np.where(valid, hist, 0)], 0)
    aff = category_affinity(hist, cat_idx, 6)
    with torch.inference_mode():
        ref = model.user(torch.from_numpy(hist_vec), torch.from_numpy(hist_cat), torch.from_numpy(aff),
                         context_features(torch.from_numpy(ts))).numpy()
    np.testing.assert_allclose(fast_aff, aff)
    np.testing.assert_allclose(fast_u, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fast_u, axis=1), 1.0, atol=1e-5)
