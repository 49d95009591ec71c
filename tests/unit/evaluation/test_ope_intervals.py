"""Interval methods for off-policy estimates: empirical likelihood, Hall, Wald."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.errors import SchemaError
from feedrank.evaluation.ope import INTERVAL_METHODS, doubly_robust, estimate_all, ips, snips
from feedrank.evaluation.ope_intervals import el_mean_interval, el_ratio_interval, el_statistic, hall_interval, z_value


def _skewed_bandit(rng: np.random.Generator, n: int, n_actions: int = 30):
    """One context, rare actions the target likes: heavy, skewed importance weights."""
    r_prob = np.linspace(0.02, 0.5, n_actions)
    mu = np.full(n_actions, 1.0)
    mu[-5:] = 0.1  # the good actions are rarely logged
    mu /= mu.sum()
    pi = np.exp(6.0 * r_prob)
    pi /= pi.sum()
    a = rng.choice(n_actions, size=n, p=mu)
    reward = (rng.random(n) < r_prob[a]).astype(float)
    q = 0.8 * r_prob + 0.03
    return reward, mu[a], pi[a], q[a], np.full(n, float(np.sum(pi * q))), float(np.sum(pi * r_prob))


def test_el_intervals_cover_a_known_value_over_many_logs():
    rng = np.random.default_rng(0)
    runs = 100
    analytic = [m for m in INTERVAL_METHODS if m in ("el", "hall", "normal")]  # bootstrap: test_ope_bootstrap.py
    covered = {m: {"ips": 0, "snips": 0, "dr": 0} for m in analytic}
    width = {m: [] for m in analytic}
    for _ in range(runs):
        r, p, pi, ql, dm, truth = _skewed_bandit(rng, 1000)
        for m in analytic:
            est = estimate_all(r, p, pi, ql, dm, level=0.9, method=m)
            for name in ("ips", "snips", "dr"):
                covered[m][name] += est[name].covers(truth)
                assert est[name].method == m and est[name].lo <= est[name].value <= est[name].hi
            width[m].append(est["ips"].hi - est["ips"].lo)
    for m in analytic:
        for name, c in covered[m].items():
            assert 0.82 <= c / runs <= 0.97, (m, name, c)
    # the same information: EL is not bought with width
    assert np.mean(width["el"]) < 1.15 * np.mean(width["normal"])


def test_el_agrees_with_wald_on_large_symmetric_samples():
    x = np.random.default_rng(1).normal(2.0, 1.0, 20_000)
    lo, hi, point = el_mean_interval(x, 0.9)
    half = z_value(0.9) * x.std(ddof=1) / np.sqrt(len(x))
    assert point == pytest.approx(x.mean())
    assert lo == pytest.approx(x.mean() - half, abs=0.02 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.02 * half)


def test_el_is_asymmetric_on_right_skewed_terms_and_monotone_in_level():
    rng = np.random.default_rng(2)
    t = rng.exponential(1.0, 400) ** 2  # strongly right-skewed
    prev = (t.mean(), t.mean())
    for level in (0.5, 0.8, 0.9, 0.95, 0.99):
        lo, hi, _ = el_mean_interval(t, level)
        assert lo < prev[0] and hi > prev[1], level  # nested: a higher level gives a wider interval
        prev = (lo, hi)
        hlo, hhi = hall_interval(t.mean(), t.std(ddof=1) / 20.0, t, level)
        assert hhi - t.mean() > t.mean() - hlo  # Hall stretches the upper side too
    lo, hi, m = el_mean_interval(t, 0.9)
    assert hi - m > m - lo  # the long side is the skewed side


def test_weight_constraint_moves_the_estimate_towards_a_full_weight_sample():
    # a log that under-samples large weights: mean(w) < 1, and the clicks sit on the large weights
    w = np.r_[np.full(900, 0.5), np.full(100, 4.0)]  # mean 0.85
    r = np.r_[np.zeros(870), np.ones(30), np.zeros(50), np.ones(50)]
    t = w * r
    lo0, hi0, p0 = el_mean_interval(t, 0.9)
    lo1, hi1, p1 = el_mean_interval(t, 0.9, weights=w)
    assert p0 == pytest.approx(0.215) and p1 > p0  # the tilt restores E[w] = 1 by up-weighting w = 4
    assert lo1 < p1 < hi1
    # constant weights carry no information: the same interval as without them
    lo2, hi2, p2 = el_mean_interval(t, 0.9, weights=np.ones(1000))
    assert (lo2, hi2, p2) == pytest.approx((lo0, hi0, p0))


def test_blockwise_el_accounts_for_correlated_rounds():
    x = np.random.default_rng(3).exponential(1.0, 500)
    doubled = np.repeat(x, 2)  # every round logged twice: perfectly correlated pairs
    lo, hi, _ = el_mean_interval(doubled, 0.9)
    clo, chi, _ = el_mean_interval(doubled, 0.9, clusters=np.repeat(np.arange(500), 2))
    blo, bhi, _ = el_mean_interval(x, 0.9)
    assert (chi - clo) == pytest.approx(bhi - blo, rel=0.02)  # the clustered interval is the honest one
    assert (hi - lo) < 0.8 * (chi - clo)


def test_el_ratio_interval_contains_the_snips_estimate():
    rng = np.random.default_rng(4)
    r, p, pi, *_ = _skewed_bandit(rng, 800)
    w = pi / p
    v = float(np.sum(w * r) / np.sum(w))
    lo, hi = el_ratio_interval(r, w, 0.9, v)
    assert lo < v < hi
    assert el_statistic(((w * (r - v)))[:, None])[0] == pytest.approx(0.0, abs=1e-9)


def test_degenerate_and_bad_inputs_raise_clear_errors():
    with pytest.raises(SchemaError, match="all terms are equal"):
        el_mean_interval(np.zeros(50), 0.9)
    with pytest.raises(SchemaError, match="at least 2"):
        el_mean_interval(np.array([1.0]), 0.9)
    with pytest.raises(SchemaError, match="level"):
        el_mean_interval(np.arange(5.0), 1.0)
    with pytest.raises(SchemaError, match="weighted rewards are all equal"):
        el_ratio_interval(np.zeros(10), np.ones(10), 0.9, 0.0)
    r, p, pi = np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.5, 0.25]), np.array([0.5, 0.2, 0.1])
    with pytest.raises(SchemaError, match="interval method"):
        ips(r, p, pi, method="bootstrap")
    with pytest.raises(SchemaError, match="clusters"):
        snips(r, p, pi, clusters=np.array([0, 1]), method="el")
    with pytest.raises(SchemaError, match="propensity"):
        ips(r, np.array([0.5, np.nan, 0.2]), pi, method="el")
    with pytest.raises(SchemaError, match="propensity"):
        ips(r, np.array([0.5, 0.0, 0.2]), pi, method="el")
    with pytest.raises(SchemaError, match="shape"):
        doubly_robust(r, p, pi, np.zeros(2), np.zeros(3), method="el")
    # no click at all: EL has nothing to profile, so the estimate falls back to a zero-width Wald interval
    e = ips(np.zeros(3), p, pi, method="el")
    assert e.value == 0.0 and e.lo == e.hi == 0.0
