"""``EngagementState.limit_users``: serving keeps at most N users' counter rows, dropping
the least recently updated; a dropped user reads as a new one; training keeps all."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.ranking.features import N_POSITIONS
from feedrank.ranking.stats import EngagementState, row_width


def _state(n_items: int = 50, n_cats: int = 4) -> EngagementState:
    rng = np.random.default_rng(0)
    return EngagementState(n_items, n_cats, rng.integers(0, n_cats, n_items), rng.integers(0, 9, n_items),
                           np.zeros(n_items), np.linspace(1.0, 0.1, N_POSITIONS))


def test_least_recently_updated_users_go_first_and_read_as_new():
    st = _state()
    st.limit_users(3)
    t = 1e6
    for u in ("a", "b", "c"):
        st.observe(u, 1, "click", 0, t)
    st.observe_impressions("a", np.array([2, 3]), np.array([0, 1]), t + 1)  # a is now the most recent
    st.observe("d", 4, "impression", 0, t + 2)  # over the cap: b (least recently updated) goes
    assert list(st.users) == ["c", "a", "d"]
    st.observe("e", 4, "impression", 0, t + 3)
    assert list(st.users) == ["a", "d", "e"]
    fresh = _state()
    got, new = st.engagement("b", np.arange(5), t + 4), fresh.engagement("b", np.arange(5), t + 4)
    for name in ("user_cat_imps", "user_cat_clicks", "user_imps", "user_clicks", "user_clicks_3d"):
        np.testing.assert_array_equal(getattr(got, name), getattr(new, name), err_msg=name)
    assert float(st.engagement("a", np.arange(5), t + 4).user_clicks[0]) == 1.0  # kept: its clicks count


def test_cap_applies_to_loaded_users_and_none_keeps_all():
    st = _state()
    rows = np.arange(5 * row_width(4), dtype=np.float64).reshape(5, -1)
    st.load_arrays(st.item, st.decay, st.decay_t, st.creator, np.array(["u0", "u1", "u2", "u3", "u4"]), rows)
    assert len(st.users) == 5 and st.max_users is None  # training / offline: every user
    st.limit_users(2)
    assert list(st.users) == ["u3", "u4"]  # the last loaded are kept
    np.testing.assert_array_equal(st.users["u4"], rows[4])
    st.limit_users(None)
    for i in range(6):
        st.observe(f"n{i}", 0, "impression", 0, 1e6)
    assert len(st.users) == 8
    with pytest.raises(ValueError, match="max_users must be >= 1"):
        st.limit_users(0)
