"""The betting confidence interval (valid by construction) for off-policy values."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.errors import SchemaError
from feedrank.evaluation.ope import INTERVAL_METHODS, estimate_all, ips
from feedrank.evaluation.ope_betting import (betting_interval, betting_lower_bound, dm_betting_interval,
                                             dr_betting_interval, ips_betting_interval)
from feedrank.evaluation.ope_intervals import z_value


def _heavy_bandit(n_actions: int = 40, rare: int = 4, p_rare: float = 0.004, sharp: float = 8.0):
    """One context; the target likes the best actions, which the logger shows with probability
    0.004 each: weights up to about 28, strongly right-skewed click terms."""
    r_prob = np.linspace(0.02, 0.6, n_actions)
    mu = np.ones(n_actions)
    mu[-rare:] = p_rare * (n_actions - rare) / (1 - p_rare * rare)
    mu /= mu.sum()
    pi = np.exp(sharp * r_prob)
    pi /= pi.sum()
    q = 0.8 * r_prob + 0.03
    return r_prob, mu, pi, q


def _draw(rng: np.random.Generator, n: int, bandit=None):
    r_prob, mu, pi, q = bandit or _heavy_bandit()
    a = rng.choice(len(mu), size=n, p=mu)
    reward = (rng.random(n) < r_prob[a]).astype(float)
    return reward, mu[a], pi[a], q[a], np.full(n, float(np.sum(pi * q))), float(np.sum(pi * r_prob))


def test_betting_is_a_registered_interval_method():
    assert "betting" in INTERVAL_METHODS


def test_betting_covers_where_wald_under_covers():
    rng = np.random.default_rng(0)
    runs = 200
    covered = {("normal", k): 0 for k in ("ips", "snips", "dr")} | {("betting", k): 0 for k in ("ips", "snips", "dr")}
    for _ in range(runs):
        r, p, pi, q, dm, truth = _draw(rng, 300)
        for m in ("normal", "betting"):
            est = estimate_all(r, p, pi, q, dm, level=0.9, method=m)
            for k in ("ips", "snips", "dr"):
                covered[(m, k)] += est[k].covers(truth)
                assert est[k].lo <= est[k].value <= est[k].hi or est[k].value > 1
    assert covered[("normal", "ips")] / runs < 0.88  # the setting is hard: Wald misses more than 12%
    for k in ("ips", "snips", "dr"):
        assert covered[("betting", k)] / runs >= 0.90, (k, covered)


def test_betting_intervals_are_nested_in_the_level():
    r, p, pi, *_ = _draw(np.random.default_rng(1), 2000)
    w = pi / p
    prev = None
    for level in (0.5, 0.8, 0.9, 0.95, 0.99):
        lo, hi = ips_betting_interval(r, w, level)
        assert 0.0 <= lo < hi <= 1.0
        if prev is not None:
            assert lo <= prev[0] + 1e-12 and hi >= prev[1] - 1e-12
        prev = (lo, hi)


def test_betting_is_wider_than_wald_by_a_bounded_factor_on_light_weights():
    rng = np.random.default_rng(2)
    n = 20_000
    w = rng.uniform(0.5, 1.5, n)  # mean 1, light
    r = (rng.random(n) < 0.3).astype(float)
    lo, hi = ips_betting_interval(r, w, 0.9)
    x = w * r
    wald = 2 * z_value(0.9) * x.std(ddof=1) / np.sqrt(n)
    assert lo < x.mean() < hi
    # asymptotically sqrt(2 log(2 / alpha)) / z = 1.49 times Wald's half-width on each side
    assert 1.0 < (hi - lo) / wald < 2.0


def test_ips_interval_stays_in_what_e_w_permits():
    rng = np.random.default_rng(3)
    n = 50
    r = (rng.random(n) < 0.5).astype(float)
    pi, prop = np.full(n, 0.01), np.full(n, 0.05)
    pi[0], prop[0], r[0] = 0.8, 0.01, 1.0  # one huge weighted click (w = 80): the IPS estimate is above 1
    w = pi / prop
    est = ips(r, prop, pi, method="betting")
    assert est.value > 1.0
    assert 0.0 <= est.lo <= est.hi <= 1.0 and est.hi == 1.0
    lo, hi = ips_betting_interval(r, w, 0.9)
    assert 0.0 <= lo and hi <= 1.0


def test_all_zero_rewards_give_a_lower_end_of_zero():
    rng = np.random.default_rng(4)
    w = rng.exponential(1.0, 5000)
    lo, hi = ips_betting_interval(np.zeros(5000), w, 0.9)
    assert lo == 0.0 and 0.0 < hi < 0.05  # nothing was clicked: the value is small, not unknown


def test_a_single_round_gives_a_valid_wide_interval():
    lo, hi = ips_betting_interval(np.array([1.0]), np.array([2.0]), 0.9)
    assert 0.0 <= lo < 0.2 and hi == 1.0


def test_clusters_of_duplicated_rounds_match_the_rounds():
    r, p, pi, *_ = _draw(np.random.default_rng(5), 3000)
    w = pi / p
    base = ips_betting_interval(r, w, 0.9)
    dup = ips_betting_interval(np.repeat(r, 2), np.repeat(w, 2), 0.9, clusters=np.repeat(np.arange(3000), 2))
    assert dup == pytest.approx(base, rel=0.03)
    naive = ips_betting_interval(np.repeat(r, 2), np.repeat(w, 2), 0.9)  # ignoring the duplication
    assert naive[1] - naive[0] < 0.85 * (base[1] - base[0])


def test_time_order_and_random_order_are_both_valid_and_deterministic():
    r, p, pi, *_ = _draw(np.random.default_rng(6), 2000)
    w = pi / p
    a = ips_betting_interval(r, w, 0.9, order="random")
    assert a == ips_betting_interval(r, w, 0.9, order="random")
    t = ips_betting_interval(r, w, 0.9, order="time")
    assert t != a and t[1] - t[0] == pytest.approx(a[1] - a[0], rel=0.5)


def test_dr_terms_have_the_stated_means_and_cover():
    r_prob, mu, pi, q = _heavy_bandit()
    v, dm = float(np.sum(pi * r_prob)), float(np.sum(pi * q))
    w = pi / mu
    # exact expectations under the logging policy: E[dm + w (1 + r - q)] = V + 1, E[w (1 + q - r) + 1 - dm] = 2 - V
    assert float(np.sum(mu * (dm + w * (1 + r_prob - q)))) == pytest.approx(v + 1)
    assert float(np.sum(mu * (w * (1 + q - r_prob) + 1 - dm))) == pytest.approx(2 - v)
    rng = np.random.default_rng(7)
    covered, wider = 0, 0
    for _ in range(60):
        rr, p, pp, ql, dml, truth = _draw(rng, 400)
        lo, hi = dr_betting_interval(rr, pp / p, ql, dml, 0.9)
        ilo, ihi = ips_betting_interval(rr, pp / p, 0.9)
        covered += lo <= truth <= hi
        wider += (hi - lo) > (ihi - ilo)
    assert covered >= 54 and wider >= 50  # valid, but the shift by w costs width on heavy weights


def test_dm_interval_for_bounded_terms():
    d = np.random.default_rng(8).beta(2, 5, 4000)
    lo, hi = dm_betting_interval(d, 0.9)
    assert lo < d.mean() < hi and hi - lo < 0.05


def test_lower_bound_is_monotone_in_the_data():
    x = np.random.default_rng(9).exponential(1.0, 1000)
    assert betting_lower_bound(x, 0.05) < betting_lower_bound(x + 0.5, 0.05)
    assert betting_lower_bound(x, 0.05) < x.mean()


@pytest.mark.parametrize("bad, match", [
    (dict(reward=np.array([0.0, np.nan])), "non-finite"),
    (dict(reward=np.array([0.0, 2.0])), "rewards must lie in"),
    (dict(weights=np.array([1.0, -1.0])), "nonnegative"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    args = dict(reward=np.array([0.0, 1.0]), weights=np.array([1.0, 1.0])) | bad
    with pytest.raises(SchemaError, match=match):
        ips_betting_interval(args["reward"], args["weights"], 0.9)


def test_bad_options_raise_clear_errors():
    x = np.ones(10)
    with pytest.raises(SchemaError, match="negative"):
        betting_lower_bound(-x, 0.05)
    with pytest.raises(SchemaError, match="alpha_side"):
        betting_lower_bound(x, 0.0)
    with pytest.raises(SchemaError, match="truncation"):
        betting_lower_bound(x, 0.05, c=1.0)
    with pytest.raises(SchemaError, match="order"):
        betting_lower_bound(x, 0.05, order="sorted")
    with pytest.raises(SchemaError, match="level"):
        betting_interval(x, 0.0, x, 1.0, 1.5)
    with pytest.raises(SchemaError, match="non-empty"):
        betting_lower_bound(np.array([]), 0.05)
    with pytest.raises(SchemaError, match="clusters"):
        betting_lower_bound(x, 0.05, clusters=np.arange(3))
    with pytest.raises(SchemaError, match="q_logged"):
        dr_betting_interval(np.zeros(3), np.ones(3), np.array([0.0, 1.5, 0.0]), np.zeros(3), 0.9)
    with pytest.raises(SchemaError, match="non-finite"):  # via the estimator's own input checks
        ips(np.array([0.0, np.nan]), np.array([0.5, 0.5]), np.array([0.5, 0.5]), method="betting")
