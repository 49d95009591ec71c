"""``EngagementState`` keeps its counters in item-major blocks (one row per item) read by
``engagement``; the reads must equal the straightforward per-field gathers from the public
(field, item) views, through events, catalogue growth and a save/load round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from feedrank.ranking.features import DECAY_TAUS_S, N_POSITIONS, USER_DECAY_TAU_S
from feedrank.ranking.stats import EngagementState


def _reference(st: EngagementState, user_id: str, items: np.ndarray, now: float) -> dict[str, np.ndarray]:
    """The per-field gathers (the code before the item-major block)."""
    items = np.asarray(items, dtype=np.int64)
    n, C = len(items), st.n_categories
    row = st.users.get(user_id)
    cats = st.item_cat[items]
    dt = np.maximum(now - st.decay_t[items], 0.0)
    d6, d24 = np.exp(-dt / DECAY_TAUS_S[0]), np.exp(-dt / DECAY_TAUS_S[1])
    dec, it, cr = st.decay[:, items], st.item[:, items], st.creator[:, st.creator_codes[items]]
    z = np.zeros(n)
    du = 1.0 if row is None else float(np.exp(-max(now - row[-1], 0.0) / USER_DECAY_TAU_S))
    return dict(
        user_cat_imps=z if row is None else row[cats], user_cat_clicks=z if row is None else row[C + cats],
        user_cat_hides=z if row is None else row[2 * C + cats],
        user_imps=np.full(n, 0.0 if row is None else row[3 * C]),
        user_clicks=np.full(n, 0.0 if row is None else row[3 * C + 1]),
        item_eimps=it[0], item_clicks=it[1], item_hides=it[2], item_imps=it[3],
        item_clicks_6h=dec[0] * d6, item_eimps_6h=dec[1] * d6, item_clicks_24h=dec[2] * d24, item_eimps_24h=dec[3] * d24,
        item_dwell_sum=it[4], item_dwell_n=it[5],
        creator_eimps=cr[0], creator_clicks=cr[1], creator_dwell_sum=cr[2], creator_dwell_n=cr[3],
        creator_is_new=st.creator_new[items],
        user_cat_eimps=z if row is None else row[3 * C + 2 + cats],
        user_eimps=np.full(n, 0.0 if row is None else row[4 * C + 2]),
        category_ctr=st.category_ctr[cats], category_click_share=st.category_share[cats],
        user_cat_clicks_3d=z if row is None else row[4 * C + 3 + cats] * du,
        user_cat_eimps_3d=z if row is None else row[5 * C + 3 + cats] * du,
        user_clicks_3d=np.full(n, 0.0 if row is None else row[6 * C + 3] * du),
    )


def _state(rng, n_items=300, n_cats=7):
    return EngagementState(n_items, n_cats, rng.integers(0, n_cats, n_items), rng.integers(0, 40, n_items),
                           (rng.random(n_items) < 0.2).astype(float), np.linspace(1.0, 0.1, N_POSITIONS),
                           rng.random(n_cats), rng.random(n_cats))


def _events(st, rng, n, t0):
    kinds = ("impression", "click", "hide", "dwell", "share")
    for j in range(n):
        st.observe(f"u{rng.integers(0, 12)}", int(rng.integers(0, st.item.shape[1])), kinds[rng.integers(0, 5)],
                   int(rng.integers(0, 30)), t0 + 60.0 * j, float(rng.exponential(5000)))


def _check(st, rng, now):
    for user in ("u1", "u5", "nobody"):
        items = rng.integers(0, st.item.shape[1], 150)
        got = dataclasses.asdict(st.engagement(user, items, now))
        want = _reference(st, user, items, now)
        assert set(got) == set(want)
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_engagement_equals_per_field_gathers_through_events_growth_and_reload(tmp_path):
    rng = np.random.default_rng(0)
    st = _state(rng)
    _check(st, rng, 1e6)  # all zeros
    _events(st, rng, 2000, 1e6)
    assert st.item.sum() > 0 and st.creator.sum() > 0 and st.decay.sum() > 0
    _check(st, rng, 1e6 + 2000 * 60.0)
    st.grow(np.array([1, 2, 3]), np.array([1.0, 0.0, 1.0]))
    assert st.item.shape == (6, 303) and st.creator_new[-3:].tolist() == [1.0, 0.0, 1.0]
    assert st.item_cat[-3:].tolist() == [1, 2, 3] and len(set(st.creator_codes[-3:]) & set(st.creator_codes[:-3])) == 0
    _events(st, rng, 500, 2e6)
    for i in (300, 301, 302):
        st.observe("u1", i, "click", 0, 2e6 + 1.0)
    _check(st, rng, 2e6 + 500 * 60.0)
    st.save(tmp_path / "s.npz")
    back = EngagementState.load(tmp_path / "s.npz", st.n_categories)
    for name in ("item", "decay", "decay_t", "creator", "creator_new", "item_cat", "creator_codes"):
        np.testing.assert_array_equal(getattr(back, name), getattr(st, name), err_msg=name)
    _check(back, rng, 2e6 + 500 * 60.0)


def test_mismatched_per_item_arrays_are_rejected():
    with pytest.raises(ValueError, match="creator_codes has 3 entries"):
        EngagementState(4, 2, np.zeros(4, int), np.zeros(3, int), np.zeros(4), np.ones(N_POSITIONS))


def test_observe_impressions_equals_one_observe_per_impression():
    rng = np.random.default_rng(1)
    a, b = _state(rng), _state(np.random.default_rng(1))
    for st in (a, b):
        _events(st, np.random.default_rng(2), 500, 1e6)
    for j in range(60):
        user = f"u{rng.integers(0, 15)}"  # some users are new
        items = rng.integers(0, 300, int(rng.integers(0, 25)))  # repeats included
        positions = rng.integers(-1, 40, len(items))
        ts = 1e6 + 500 * 60.0 + 30.0 * (j // 3)  # some feeds share a time
        for i, p in zip(items.tolist(), positions.tolist()):
            a.observe(user, i, "impression", p, ts)
        b.observe_impressions(user, items, positions, ts)
    for name in ("item", "decay", "decay_t", "creator"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.users.keys() == b.users.keys()
    for user in a.users:
        np.testing.assert_array_equal(a.users[user], b.users[user], err_msg=user)
