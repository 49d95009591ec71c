"""Cluster-bootstrap intervals (bootstrap-t, BCa, variance-stabilised bootstrap-t) on cases
with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.errors import SchemaError
from feedrank.evaluation.ope import estimate_all, ips
from feedrank.evaluation.ope_bootstrap import (BOOTSTRAP_METHODS, bootstrap_interval, ratio_draws, resample_counts,
                                               vst_power)
from feedrank.evaluation.ope_intervals import hall_interval


def _misses(method: str, runs: int = 400, n: int = 25) -> tuple[int, int]:
    """(truth below the interval, truth above it) for the mean (1) of Exp(1) samples of size n."""
    rng = np.random.default_rng(1)
    below = above = 0
    for i in range(runs):
        x = rng.exponential(1.0, n)
        if method == "normal":
            lo, hi = hall_interval(float(x.mean()), float(x.std(ddof=1) / np.sqrt(n)), x, 0.9, skew_correction=False)
        else:
            lo, hi = bootstrap_interval(method, x, np.ones(n), 0.9, n_boot=400, seed=i)
        below += 1.0 < lo
        above += 1.0 > hi
    return below, above


def test_bootstrap_covers_the_mean_of_a_skewed_distribution():
    """Exp(1), n = 25 (skewness 2): the Wald interval misses mostly above (a sample short of
    large values is low and looks precise); bootstrap-t moves its upper end out."""
    runs = 400
    nb, na = _misses("normal", runs)
    assert na > 2.5 * nb  # the asymmetry the bootstrap is for
    for m in ("boot-t", "boot-t-vst"):
        b, a = _misses(m, runs)
        assert 0.85 <= 1 - (a + b) / runs <= 0.95, (m, b, a)
        assert a <= 0.8 * na, (m, a, na)
    b, a = _misses("bca", runs)
    assert 1 - (a + b) / runs >= 0.82 and a < na, (b, a)


def test_all_methods_agree_on_a_large_symmetric_sample():
    x = np.random.default_rng(2).normal(5.0, 2.0, 4000)
    se = float(x.std(ddof=1) / np.sqrt(len(x)))
    w_lo, w_hi = hall_interval(float(x.mean()), se, x, 0.9, skew_correction=False)
    for m in BOOTSTRAP_METHODS:
        lo, hi = bootstrap_interval(m, x, np.ones(len(x)), 0.9, n_boot=1000)
        assert lo == pytest.approx(w_lo, abs=0.2 * se) and hi == pytest.approx(w_hi, abs=0.2 * se), m


def test_clustered_duplicates_equal_the_originals():
    """Each round duplicated, resampled by pairs: the same replicates, hence the same interval,
    as the originals resampled one by one (a round-level bootstrap would be ~1/sqrt(2) too short)."""
    x = np.random.default_rng(3).exponential(1.0, 300)
    doubled = np.repeat(x, 2)
    for m in BOOTSTRAP_METHODS:
        a = bootstrap_interval(m, x, np.ones(300), 0.9, n_boot=500)
        b = bootstrap_interval(m, doubled, np.ones(600), 0.9, clusters=np.repeat(np.arange(300), 2), n_boot=500)
        assert a == pytest.approx(b, rel=1e-9), m
        naive = bootstrap_interval(m, doubled, np.ones(600), 0.9, n_boot=500)
        assert naive[1] - naive[0] < 0.8 * (a[1] - a[0])


def test_ratio_draws_match_the_delta_method_and_reproduce():
    rng = np.random.default_rng(4)
    w = rng.exponential(1.0, 2000)
    r = (rng.random(2000) < 0.2).astype(float)
    d = ratio_draws(w * r, w, n_boot=300, seed=7)
    v = float(np.sum(w * r) / np.sum(w))
    resid = w * (r - v)
    assert d.value == pytest.approx(v)
    assert d.se == pytest.approx(np.sqrt(np.sum(resid**2) * 2000 / 1999) / np.sum(w), rel=1e-9)
    assert np.std(d.values) == pytest.approx(d.se, rel=0.15)  # the bootstrap spread is the delta method's
    again = ratio_draws(w * r, w, n_boot=300, seed=7)
    assert np.array_equal(d.values, again.values)
    assert not np.array_equal(d.values, ratio_draws(w * r, w, n_boot=300, seed=8).values)
    counts = resample_counts(50, 200, seed=1)
    assert counts.shape == (200, 50) and np.all(counts.sum(axis=1) == 50)


def test_variance_power_of_rare_equal_terms_is_one_half():
    """A sum of rare equal terms is a scaled Poisson count: se ∝ V^(1/2)."""
    x = 10.0 * (np.random.default_rng(5).random(4000) < 0.03)
    k = vst_power(ratio_draws(x, np.ones(4000), n_boot=1000))
    assert k is not None and 0.35 <= k <= 0.65
    assert vst_power(ratio_draws(x - 1.0, np.ones(4000), n_boot=200)) is None  # no log scale for a negative mean


def test_off_policy_estimates_with_bootstrap_intervals():
    rng = np.random.default_rng(6)
    n = 3000
    p = rng.uniform(0.05, 1.0, n)
    pi = np.clip(p * rng.exponential(1.0, n), 0.0, 1.0)
    r = (rng.random(n) < 0.3).astype(float)
    users = rng.integers(0, 800, n)
    for m in BOOTSTRAP_METHODS:
        est = estimate_all(r, p, pi, np.full(n, 0.3), np.full(n, 0.3), level=0.9, clusters=users, method=m)
        for name in ("ips", "snips", "dr"):
            e = est[name]
            assert e.method == m and e.lo <= e.value <= e.hi
            assert 0.85 < (e.hi - e.lo) / (2 * 1.645 * e.stderr) < 1.6, (m, name)  # about the Wald width


def test_bad_inputs_raise():
    x = np.arange(10.0)
    with pytest.raises(SchemaError, match="method"):
        bootstrap_interval("percentile", x, np.ones(10), 0.9)
    with pytest.raises(SchemaError, match="level"):
        bootstrap_interval("boot-t", x, np.ones(10), 1.5)
    with pytest.raises(SchemaError, match="aligned"):
        bootstrap_interval("bca", x, np.ones(9), 0.9)
    with pytest.raises(SchemaError, match="non-finite"):
        bootstrap_interval("bca", np.r_[x[:9], np.nan], np.ones(10), 0.9)
    with pytest.raises(SchemaError, match="2 clusters"):
        bootstrap_interval("boot-t", x, np.ones(10), 0.9, clusters=np.zeros(10))
    with pytest.raises(SchemaError, match="denominator"):
        bootstrap_interval("boot-t", x, np.zeros(10), 0.9)
    with pytest.raises(SchemaError, match="100 resamples"):
        bootstrap_interval("boot-t", x, np.ones(10), 0.9, n_boot=10)
    with pytest.raises(SchemaError, match="infinite quantile"):  # almost every resample has no spread
        bootstrap_interval("boot-t", np.r_[np.zeros(99), 1.0], np.ones(100), 0.9, n_boot=200)
    with pytest.raises(SchemaError, match="interval method"):
        ips(np.ones(3), np.full(3, 0.5), np.full(3, 0.5), method="percentile")
