"""Issue 8 review of the betting interval: a predictable per-cluster cap (A1), O(N)-memory end
point search with unchanged results (A2), and crossed ends reported, not collapsed (A3)."""

from __future__ import annotations

import numpy as np
import pytest

import feedrank.evaluation.ope_betting as ob
from feedrank.errors import SchemaError
from feedrank.evaluation.ope import ips, snips
from feedrank.evaluation.ope_betting import betting_lower_bound, dr_betting_interval, ips_betting_interval


def _size_dependent_users(rng: np.random.Generator, users: int = 10, p_big: float = 0.5, n_big: int = 40):
    """Independent users; a 'small' user has one round with reward 1, a 'big' one n_big rounds
    with reward 0, so a user's value depends on their activity. Per-round value V below."""
    big = rng.random(users) < p_big
    sizes = np.where(big, n_big, 1)
    x = np.concatenate([np.zeros(s) if b else np.ones(1) for s, b in zip(sizes, big)])
    clusters = np.repeat(np.arange(users), sizes)
    return x, clusters


def test_lower_end_keeps_its_level_when_value_depends_on_user_size():
    # The reviewer's setting: with a cap from the current user's own size (not predictable) the
    # lower end missed 20-53% of the time at a nominal 5%; with the log's largest size it is valid.
    p_big, n_big = 0.5, 40
    truth = (1 - p_big) / ((1 - p_big) + p_big * n_big)  # E[sum x] / E[n] per user
    rng = np.random.default_rng(1)
    reps = 400
    misses = 0
    for r in range(reps):
        x, clusters = _size_dependent_users(rng, p_big=p_big, n_big=n_big)
        misses += betting_lower_bound(x, 0.05, clusters, seed=r) > truth
    assert misses / reps <= 0.08, f"lower end above the truth in {misses}/{reps} logs (nominal 5%)"


def test_equal_clusters_are_unchanged_by_the_predictable_cap():
    # With every cluster of one size, c / (m n_max) = c / (m n_c): duplicated rounds match rounds.
    rng = np.random.default_rng(3)
    x = rng.exponential(0.3, 150)
    per_round = betting_lower_bound(x, 0.05)
    xs, ns = ob._grouped(x, None, "random", ob.BETTING_SEED)
    lam = ob.bet_sizes(xs, ns, 0.05)
    m = np.linspace(0.01, 0.5, 7)
    np.testing.assert_array_equal(ob.log_capital(m, xs, ns, lam), ob.log_capital(m, xs, ns, lam, n_max=1.0))
    assert per_round > 0


def test_log_capital_rejects_a_cap_below_the_largest_cluster():
    with pytest.raises(SchemaError, match="n_max"):
        ob.log_capital(np.array([0.1]), np.array([1.0, 2.0]), np.array([1.0, 3.0]), np.array([0.5, 0.5]), n_max=2.0)


def test_chunked_end_point_search_gives_the_same_bounds(monkeypatch):
    rng = np.random.default_rng(7)
    n = 3000
    w = rng.exponential(1.0, n)
    r = (rng.random(n) < 0.3).astype(float)
    users = rng.integers(0, 400, n)
    whole = [ips_betting_interval(r, w, 0.9, cl) for cl in (None, users)]
    xs, ns = ob._grouped(w * r, users, "random", ob.BETTING_SEED)
    lam = ob.bet_sizes(xs, ns, 0.05)
    grid = np.linspace(0.0, 1.0, 49)
    at_once = ob.log_capital(grid, xs, ns, lam)
    monkeypatch.setattr(ob, "_CHUNK", 1000)  # a few grid rows per chunk (one row when N > 1000)
    np.testing.assert_allclose(ob.log_capital(grid, xs, ns, lam), at_once, rtol=0, atol=1e-12)
    chunked = [ips_betting_interval(r, w, 0.9, cl) for cl in (None, users)]
    np.testing.assert_allclose(np.array(chunked), np.array(whole), rtol=0, atol=1e-9)


def test_crossed_ends_are_reported_and_not_collapsed():
    # Weights of 2 everywhere (E[w] = 2, not 1): w r says V >= ~0.9, w (1 - r) says V <= ~0.1.
    rng = np.random.default_rng(5)
    n = 400
    r = (rng.random(n) < 0.5).astype(float)
    prop, target = np.full(n, 0.5), np.ones(n)
    lo_raw, hi_raw = ips_betting_interval(r, np.full(n, 2.0), 0.9)
    assert lo_raw > hi_raw
    for est in (ips(r, prop, target, 0.9, method="betting"), snips(r, prop, target, 0.9, method="betting")):
        assert est.crossed
        assert 0.0 <= est.lo <= hi_raw < lo_raw <= est.hi <= 1.0
        assert est.lo <= min(max(est.value, 0.0), 1.0) <= est.hi
        assert est.to_dict()["crossed"] is True


def test_uncrossed_ends_are_not_flagged():
    rng = np.random.default_rng(6)
    n = 500
    r = (rng.random(n) < 0.4).astype(float)
    est = ips(r, np.full(n, 0.5), np.full(n, 0.5), 0.9, method="betting")
    assert not est.crossed and est.lo < est.value < est.hi


def test_interval_ends_are_clipped_to_the_unit_range():
    # DR's shifted terms: L(dm + w (1 + r - q)) - 1 can fall below 0 on a short log.
    rng = np.random.default_rng(8)
    n = 30
    w = rng.exponential(1.0, n)
    r = np.zeros(n)
    lo, hi = dr_betting_interval(r, w, np.ones(n), np.zeros(n), 0.9)
    assert 0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0
