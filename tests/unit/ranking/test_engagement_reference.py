"""``engagement_features`` against a frozen copy of its column formulas as they were before
they were batched for speed (2026-11-22, commit 55807bc): the same values, column by column,
on random counters with zeros, negatives (clipped) and (N,) or broadcast user fields."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.ranking.features import DWELL_PRIOR_WEIGHT, ENGAGEMENT_FEATURE_NAMES, Engagement, engagement_features


def _ctr(clicks, impressions, prior_ctr, prior_weight):
    return (clicks + prior_weight * prior_ctr) / (impressions + prior_weight)


def _reference(eng: Engagement, age_s, prior_ctr: float, w: float, dwell_prior: float) -> np.ndarray:
    user_ctr = _ctr(eng.user_clicks, eng.user_imps, prior_ctr, w)
    user_dctr = _ctr(eng.user_clicks, eng.user_eimps, prior_ctr, w)
    cat_ctr = np.asarray(eng.category_ctr, dtype=np.float64)
    vs_cat = _ctr(eng.user_cat_clicks, eng.user_cat_eimps, cat_ctr, 3.0)
    cols = [
        _ctr(eng.user_cat_clicks, eng.user_cat_imps, user_ctr, 5.0),
        np.log1p(np.maximum(eng.user_cat_imps, 0)),
        np.log1p(np.maximum(eng.user_cat_clicks, 0)),
        np.log1p(np.maximum(eng.user_cat_hides, 0)),
        np.log1p(np.maximum(eng.user_imps, 0)),
        user_ctr,
        _ctr(eng.item_clicks, eng.item_eimps, prior_ctr, w),
        _ctr(eng.item_clicks_6h, eng.item_eimps_6h, prior_ctr, w),
        _ctr(eng.item_clicks_24h, eng.item_eimps_24h, prior_ctr, w),
        np.log1p(np.maximum(eng.item_clicks_6h, 0)),
        _ctr(eng.item_hides, eng.item_imps, 0.0, w),
        (eng.item_dwell_sum + DWELL_PRIOR_WEIGHT * dwell_prior) / (eng.item_dwell_n + DWELL_PRIOR_WEIGHT),
        _ctr(eng.creator_clicks, eng.creator_eimps, prior_ctr, w),
        np.log1p(np.maximum(eng.creator_clicks, 0)),
        (eng.creator_dwell_sum + DWELL_PRIOR_WEIGHT * dwell_prior) / (eng.creator_dwell_n + DWELL_PRIOR_WEIGHT),
        np.asarray(eng.creator_is_new, dtype=np.float64),
        np.maximum(np.asarray(age_s, dtype=np.float64), 0) / 86400.0,
        np.log1p(np.maximum(eng.user_cat_eimps, 0)),
        _ctr(eng.user_cat_clicks, eng.user_cat_eimps, user_dctr, 5.0),
        vs_cat,
        np.log(np.maximum(vs_cat, 1e-6)),
        np.log((np.maximum(eng.user_cat_clicks, 0) + np.maximum(eng.category_click_share, 1e-3))
               / (np.maximum(eng.user_clicks, 0) + 1.0)),
        cat_ctr,
        np.log1p(np.maximum(eng.user_cat_clicks_3d, 0)),
        np.log1p(np.maximum(eng.user_cat_eimps_3d, 0)),
        _ctr(eng.user_cat_clicks_3d, eng.user_cat_eimps_3d, cat_ctr, 3.0),
        np.log((np.maximum(eng.user_cat_clicks_3d, 0) + np.maximum(eng.category_click_share, 1e-3))
               / (np.maximum(eng.user_clicks_3d, 0) + 1.0)),
    ]
    n = len(age_s)
    return np.stack([np.broadcast_to(c, (n,)) for c in cols], axis=1)


def _random(rng: np.random.Generator, n: int) -> Engagement:
    def col():
        x = rng.gamma(0.7, 20.0, n) * (rng.random(n) < 0.7)  # many zeros, long tail
        return np.where(rng.random(n) < 0.05, -x, x)  # a few negatives: the features clip them
    eng = Engagement(**{f: col() for f in Engagement.__dataclass_fields__})
    eng.category_ctr = rng.random(n) * 0.2
    eng.category_click_share = rng.random(n) * 0.3
    eng.creator_is_new = (rng.random(n) < 0.2).astype(float)
    return eng


@pytest.mark.parametrize("seed", range(6))
def test_engagement_features_equal_the_frozen_formulas(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    eng = _random(rng, n)
    age = rng.normal(3 * 86400.0, 86400.0, n)  # some negative ages: clipped to 0
    prior_ctr, w, dwell_prior = float(rng.random() * 0.1), float(rng.integers(1, 50)), float(rng.random())
    want = _reference(eng, age, prior_ctr, w, dwell_prior)
    got = engagement_features(eng, age, prior_ctr, w, dwell_prior)
    assert got.shape == (n, len(ENGAGEMENT_FEATURE_NAMES))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    out = np.full((n, len(ENGAGEMENT_FEATURE_NAMES)), np.nan)
    engagement_features(eng, age, prior_ctr, w, dwell_prior, out=out)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=0)
