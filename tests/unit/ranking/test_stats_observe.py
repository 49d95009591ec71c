"""``EngagementState.observe_impressions`` on served feeds (distinct items, the fast path)
and on runs with repeats: bitwise the counters of one ``observe`` per impression, through
new users, items seen before at older times, feeds sharing a time and creators repeated."""

from __future__ import annotations

import numpy as np

from feedrank.ranking.features import N_POSITIONS
from feedrank.ranking.stats import EngagementState


def _state(n_items: int = 400, n_cats: int = 7) -> EngagementState:
    rng = np.random.default_rng(3)
    return EngagementState(n_items, n_cats, rng.integers(0, n_cats, n_items), rng.integers(0, 40, n_items),
                           (rng.random(n_items) < 0.2).astype(float), np.linspace(1.0, 0.1, N_POSITIONS))


def _assert_same(a: EngagementState, b: EngagementState) -> None:
    for name in ("item", "decay", "decay_t", "creator"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.users.keys() == b.users.keys()
    for user in a.users:
        np.testing.assert_array_equal(a.users[user], b.users[user], err_msg=user)


def test_feeds_of_distinct_items_equal_one_observe_per_impression():
    a, b = _state(), _state()
    rng = np.random.default_rng(7)
    t = 1e6
    for j in range(80):
        user = f"u{rng.integers(0, 12)}"
        n = int(rng.integers(1, 30))
        items = rng.choice(400, n, replace=False) if j % 5 else rng.integers(0, 400, n)  # every 5th may repeat
        positions = rng.permutation(n) if j % 3 else rng.integers(-2, 50, n)  # out-of-range positions clip
        t += float(rng.choice([0.0, 1.0, 3600.0, 86400.0]))  # same time, seconds, hours, a day apart
        for i, p in zip(items.tolist(), positions.tolist()):
            a.observe(user, i, "impression", p, t)
            if j % 7 == 0:
                a.observe(user, i, "click", p, t)
        b.observe_impressions(user, items, positions, t)
        if j % 7 == 0:
            for i, p in zip(items.tolist(), positions.tolist()):
                b.observe(user, i, "click", p, t)
    _assert_same(a, b)
    assert b.item[3].sum() > 0 and (b.decay_t > 0).any()


def test_engagement_read_after_a_feed_sees_its_impressions():
    st = _state()
    items = np.array([5, 9, 11])
    before = st.engagement("u1", items, 2e6)
    st.observe_impressions("u1", items, np.array([0, 1, 2]), 2e6)
    after = st.engagement("u1", items, 2e6)
    np.testing.assert_array_equal(after.item_imps, before.item_imps + 1)
    np.testing.assert_array_equal(after.user_imps, np.full(3, 3.0))
    assert (after.item_eimps_6h > before.item_eimps_6h).all()
