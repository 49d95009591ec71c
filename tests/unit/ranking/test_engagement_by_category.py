"""Serving's split engagement read (``EngagementState.engagement_by_category``: the user's
columns once per category, then gathered) and scalar ``ts`` / ``user_clicks`` give bitwise
the same ranker features as the full (n,) form that training uses, for known users (decayed
counters), unknown users and a state without category priors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from feedrank.ranking.features import N_POSITIONS, ranking_features
from feedrank.ranking.stats import EngagementState


def _state(rng, n_items=400, n_cats=7, priors=True):
    st = EngagementState(n_items, n_cats, rng.integers(0, n_cats, n_items), rng.integers(0, 50, n_items),
                         (rng.random(n_items) < 0.2).astype(float), np.linspace(1.0, 0.1, N_POSITIONS),
                         rng.random(n_cats) if priors else None, rng.random(n_cats) if priors else None)
    kinds = ("impression", "click", "hide", "dwell")
    for j in range(3000):
        st.observe(f"u{rng.integers(0, 15)}", int(rng.integers(0, n_items)), kinds[rng.integers(0, 4)],
                   int(rng.integers(0, 25)), 1.7e9 + 37.0 * j, float(rng.exponential(5000)))
    return st


@pytest.mark.parametrize("priors", [True, False])
def test_engagement_by_category_gives_the_same_features(priors: bool):
    rng = np.random.default_rng(3 if priors else 4)
    st = _state(rng, priors=priors)
    now = 1.7e9 + 37.0 * 3000 + 5000.0
    for user in ("u1", "u7", "nobody"):
        items = rng.integers(0, 400, 300)
        full, split = st.engagement(user, items, now), st.engagement_by_category(user, items, now)
        np.testing.assert_array_equal(split.categories, st.item_cat[items])
        for f in dataclasses.fields(full):  # each field: the per-item one, or the per-category one gathered
            a = getattr(full, f.name)
            per_item, per_cat = getattr(split.per_item, f.name), getattr(split.per_category, f.name)
            if len(per_item) == len(items):
                np.testing.assert_array_equal(per_item, a, err_msg=f.name)
            else:
                want = per_cat[split.categories] if len(per_cat) == st.n_categories else np.broadcast_to(per_cat, a.shape)
                np.testing.assert_array_equal(want, a, err_msg=f.name)
        n = len(items)
        sim, aff = rng.normal(size=n).astype(np.float32), rng.random(n).astype(np.float32)
        imps, clicks = rng.gamma(1.0, 30.0, n), rng.gamma(1.0, 2.0, n)
        age = rng.uniform(-10.0, 5 * 86400.0, n)
        age[:3] = [np.nan, np.inf, 0.0]
        user_clicks = float(rng.integers(0, 40))
        want = ranking_features(sim, aff, imps, clicks, age, np.full(n, user_clicks), np.full(n, now), 0.05, 20.0,
                                engagement=full, dwell_prior=1.3)
        got = ranking_features(sim, aff, imps, clicks, age, user_clicks, now, 0.05, 20.0, engagement=split,
                               dwell_prior=1.3)
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_the_split_read_copies_the_users_row():
    rng = np.random.default_rng(9)
    st = _state(rng)
    items = np.arange(50)
    split = st.engagement_by_category("u1", items, 1.8e9)
    before = split.per_category.user_cat_imps.copy()
    st.observe_impressions("u1", items[:5], np.arange(5), 1.8e9)  # rows are updated in place
    np.testing.assert_array_equal(split.per_category.user_cat_imps, before)


def test_observe_impressions_rejects_rows_outside_the_catalogue():
    st = EngagementState(5, 2, np.array([0, 1, 0, 1, 0]), np.array([0, 0, 1, 1, 2]), np.zeros(5),
                         np.linspace(1.0, 0.1, N_POSITIONS))
    with pytest.raises(ValueError, match="item rows"):
        st.observe_impressions("u", np.array([4, -1]), np.array([0, 1]), 10.0)  # -1 would alias row 4
    with pytest.raises(ValueError, match="item rows"):
        st.observe_impressions("u", np.array([5]), np.array([0]), 10.0)
    st.observe_impressions("u", np.array([4, 3]), np.array([0, 1]), 10.0)
    assert st.item[3, 4] == 1.0 and st.item[3, 3] == 1.0
