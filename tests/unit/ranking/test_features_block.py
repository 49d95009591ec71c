"""``ranking_features`` (one preallocated block, non-finite values zeroed in place) against the
straightforward form it replaced (columns stacked, concatenated, ``np.nan_to_num``): bitwise
equal, including NaN / inf inputs and an empty batch; training and serving both call it."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.ranking.features import N_FEATURES, Engagement, engagement_features, ranking_features


def _reference(tower_sim, category_affinity, item_impressions, item_clicks, age_s, user_clicks, ts, prior_ctr,
               prior_weight, engagement=None, dwell_prior=0.0):
    def smoothed(c, i, p, w):
        return (c + w * p) / (i + w)

    ts = np.asarray(ts, dtype=np.float64)
    hours = np.remainder(ts / 3600.0, 24.0)
    days = np.remainder(ts / 86400.0 + 3.0, 7.0)
    n = len(tower_sim)
    cols = [np.asarray(tower_sim, dtype=np.float64), np.asarray(category_affinity, dtype=np.float64),
            np.log1p(np.maximum(item_impressions, 0)), np.log1p(np.maximum(item_clicks, 0)),
            smoothed(np.asarray(item_clicks, np.float64), np.asarray(item_impressions, np.float64), prior_ctr, prior_weight),
            np.log1p(np.maximum(age_s, 0) / 3600.0), np.log1p(np.maximum(user_clicks, 0)),
            np.broadcast_to(np.sin(2 * np.pi * hours / 24), (n,)), np.broadcast_to(np.cos(2 * np.pi * hours / 24), (n,)),
            np.broadcast_to(np.sin(2 * np.pi * days / 7), (n,)), np.broadcast_to(np.cos(2 * np.pi * days / 7), (n,))]
    base = np.stack(cols, axis=1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        eng = engagement_features(engagement if engagement is not None else Engagement.zeros(n),
                                  np.asarray(age_s, dtype=np.float64), prior_ctr, prior_weight, dwell_prior)
    x = np.concatenate([base, eng], axis=1).astype(np.float32)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _inputs(n: int, seed: int, with_engagement: bool, scalar_ts: bool):
    rng = np.random.default_rng(seed)
    eng = None
    if with_engagement:
        eng = Engagement(**{f: rng.gamma(1.0, 5.0, n) * rng.integers(0, 2, n) for f in Engagement.__dataclass_fields__})
        eng.user_clicks[: n // 10] = -1.0  # log of a negative ratio: NaN
        eng.item_dwell_n[: n // 7] = -DWELL
    args = dict(tower_sim=rng.standard_normal(n).astype(np.float32), category_affinity=rng.random(n),
                item_impressions=rng.poisson(50.0, n).astype(np.float64), item_clicks=rng.poisson(3.0, n).astype(np.float64),
                age_s=rng.uniform(-100.0, 9e5, n), user_clicks=rng.poisson(4.0, n).astype(np.float64),
                ts=np.full(n, 1.7e9) if scalar_ts else rng.uniform(1.7e9, 1.8e9, n), prior_ctr=0.05, prior_weight=20.0,
                engagement=eng, dwell_prior=0.7)
    if n:
        args["item_impressions"][0] = np.inf
        args["category_affinity"][1 % n] = np.nan
    return args


DWELL = 5.0  # DWELL_PRIOR_WEIGHT: item_dwell_n = -5 divides by zero (inf)


@pytest.mark.parametrize("n", [0, 1, 7, 500])
@pytest.mark.parametrize("with_engagement", [False, True])
@pytest.mark.parametrize("scalar_ts", [False, True])
def test_block_form_is_bitwise_the_stacked_form(n, with_engagement, scalar_ts):
    args = _inputs(n, n + 3 * with_engagement + scalar_ts, with_engagement, scalar_ts)
    got = ranking_features(**args)
    want = _reference(**args)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape == (n, N_FEATURES)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))  # bitwise, signed zeros included
