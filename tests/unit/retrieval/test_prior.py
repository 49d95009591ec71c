"""The retrieval freshness prior: the fit recovers a known decay, never rewards age, and
the served rescoring ranks like exact scoring."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.retrieval.counters import ItemCounters
from feedrank.retrieval.prior import (
    DAY_S,
    ITEM_CTR_STRENGTH,
    AgePrior,
    fit_age_weight,
    point_in_time_counts,
    rescore_with_prior,
    smoothed_ctr_ratio,
)


def _world(w_true: float, seed: int = 0, n_items: int = 400, n_clicks: int = 1500, d: int = 8, t: float = 0.2):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, d)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    pub = rng.uniform(0, 20 * DAY_S, n_items)
    ts = rng.uniform(10 * DAY_S, 20 * DAY_S, n_clicks)
    users = rng.standard_normal((n_clicks, d)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    age = (ts[:, None] - pub[None, :]) / DAY_S
    logit = users @ items.T / t - w_true * np.maximum(age, 0)
    logit = np.where(age >= 0, logit, -np.inf)
    p = np.exp(logit - logit.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pos = np.array([rng.choice(n_items, p=row) for row in p])
    return users, items, pos, ts, pub, t


@pytest.mark.parametrize("w_true", [0.3, 1.0])
def test_fit_recovers_the_decay(w_true: float):
    users, items, pos, ts, pub, t = _world(w_true)
    w, nll0, nll1 = fit_age_weight(users, items, pos, ts, pub, t)
    assert w[0] == pytest.approx(w_true, rel=0.25)
    assert nll1 < nll0


def test_fit_never_rewards_age_and_subsamples_large_catalogues():
    users, items, pos, ts, pub, t = _world(0.0, n_items=600)
    # clicks that favour old items: the fit stays at 0, it does not go negative
    old_first = np.argsort(pub)[:50]
    pos = np.resize(old_first, len(pos))
    pub_click = pub[pos]
    ts = np.maximum(ts, pub_click + 1.0)
    w, _, _ = fit_age_weight(users, items, pos, ts, pub, t, max_items=200, rng=np.random.default_rng(1))
    assert w.tolist() == [0.0]


def test_served_rescoring_matches_exact_scoring_on_the_same_candidates():
    users, items, _, _, pub, t = _world(0.5, n_items=300)
    prior = AgePrior(weight=0.5, temperature=t, ref_ts=0.0)
    now = 21 * DAY_S
    exact = prior.scores(users[:3], items, pub, now)
    for j in range(3):
        got, scores = rescore_with_prior(prior, users[j], np.arange(300), items, pub, now, 20)
        assert got.tolist() == np.argsort(-exact[j], kind="stable")[:20].tolist()
        assert np.all(np.diff(scores) <= 1e-6)
    empty, s = rescore_with_prior(prior, users[0], np.zeros(0, dtype=np.int64), items[:0], pub[:0], now, 5)
    assert len(empty) == 0 and len(s) == 0


def test_point_in_time_counts_only_count_earlier_clicks():
    counts = point_in_time_counts(np.array([0, 1, 0, 2]), np.array([5.0, 1.0, 9.0, 20.0]), np.array([10.0, 0.0, 5.0]), 3)
    assert counts.tolist() == [[2, 1, 0], [0, 0, 0], [0, 1, 0]]  # item 0 at 5 and 9; at 5 itself: not before


def test_fit_recovers_a_popularity_weight_too():
    users, items, _, ts, pub, t = _world(0.0, seed=3)
    rng = np.random.default_rng(4)
    counts = np.broadcast_to(rng.integers(0, 50, len(items)).astype(np.float32), (len(ts), len(items))).copy()
    age = (ts[:, None] - pub[None, :]) / DAY_S
    logit = users @ items.T / t - 0.4 * np.maximum(age, 0) + 0.8 * np.log1p(counts)
    logit = np.where(age >= 0, logit, -np.inf)
    p = np.exp(logit - logit.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pos = np.array([rng.choice(len(items), p=row) for row in p])
    w, _, _ = fit_age_weight(users, items, pos, ts, pub, t, click_counts=counts)
    assert w[0] == pytest.approx(0.4, rel=0.3) and w[1] == pytest.approx(0.8, rel=0.3)
    prior = AgePrior(float(w[0]), t, 0.0, float(w[1]))
    got, _ = rescore_with_prior(prior, users[0], np.arange(len(items)), items, pub, 21 * DAY_S, 10, clicks=counts[0])
    exact = prior.scores(users[:1], items, pub, 21 * DAY_S, clicks=counts[0])[0]
    assert got.tolist() == np.argsort(-exact, kind="stable")[:10].tolist()


def test_a_weight_held_at_zero_does_not_stop_the_other():
    """Clicks that like popular items and old ones: w_age stays 0, w_pop is still fitted."""
    users, items, _, ts, pub, t = _world(0.0, seed=5)
    rng = np.random.default_rng(6)
    counts = np.broadcast_to(rng.integers(0, 50, len(items)).astype(np.float32), (len(ts), len(items))).copy()
    age = (ts[:, None] - pub[None, :]) / DAY_S
    logit = users @ items.T / t + 0.2 * np.maximum(age, 0) + 0.8 * np.log1p(counts)  # rewards age
    logit = np.where(age >= 0, logit, -np.inf)
    p = np.exp(logit - logit.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pos = np.array([rng.choice(len(items), p=row) for row in p])
    w, nll0, nll1 = fit_age_weight(users, items, pos, ts, pub, t, click_counts=counts)
    assert w[0] == 0.0 and w[1] > 0.4 and nll1 < nll0


def test_fit_recovers_a_smoothed_ctr_weight_from_counters():
    users, items, _, ts, pub, t = _world(0.0, seed=5)
    rng = np.random.default_rng(6)
    imps = rng.integers(0, 400, len(items)).astype(np.float64)
    true_ctr = rng.beta(2, 60, len(items))
    clicks = rng.binomial(imps.astype(int), true_ctr).astype(np.float64)
    feat = smoothed_ctr_ratio(clicks, imps, float(clicks.sum() / imps.sum()), ITEM_CTR_STRENGTH)
    f = np.broadcast_to(feat.astype(np.float32), (len(ts), len(items))).copy()
    age = (ts[:, None] - pub[None, :]) / DAY_S
    logit = users @ items.T / t - 0.3 * np.maximum(age, 0) + 1.2 * f
    logit = np.where(age >= 0, logit, -np.inf)
    p = np.exp(logit - logit.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pos = np.array([rng.choice(len(items), p=row) for row in p])
    w, nll0, nll1 = fit_age_weight(users, items, pos, ts, pub, t, more_feats=[f])
    assert w[0] == pytest.approx(0.3, rel=0.3) and w[1] == pytest.approx(1.2, rel=0.25)
    assert nll1 < nll0


def test_smoothed_ctr_ratio_shrinks_towards_the_global_ctr():
    r = smoothed_ctr_ratio(np.array([0.0, 1.0, 50.0, 5.0]), np.array([0.0, 1.0, 100.0, 0.0]), 0.05, 20.0)
    assert r[0] == 0.0                     # never shown: the global CTR
    assert 0 < r[1] < np.log(1 / 0.05)     # 1 of 1: above average, far below 100%
    assert r[2] > r[1]                     # 50 of 100: strong evidence
    assert np.isfinite(r[3])               # clicks without logged impressions count as seen


def test_counters_add_the_ctr_terms_and_missing_impressions_leave_them_out():
    prior = AgePrior(0.0, 1.0, 0.0, ctr_weight=2.0, creator_weight=1.0, ctr0=0.1)
    pub = np.zeros(2)
    c = ItemCounters(np.array([10.0, 0.0]), np.array([20.0, 20.0]), np.array([30.0, 0.0]), np.array([100.0, 100.0]))
    b = prior.bias(pub, None, 0.0, c)
    want = 2.0 * smoothed_ctr_ratio(c.clicks, c.impressions, 0.1, prior.ctr_strength) + \
        1.0 * smoothed_ctr_ratio(c.creator_clicks, c.creator_impressions, 0.1, prior.creator_strength)
    assert np.allclose(b, want) and b[0] > 0 > b[1]
    assert np.allclose(prior.bias(pub, None, 0.0, ItemCounters(c.clicks)), 0.0)


def test_users_without_history_get_the_cold_user_weights():
    cold = AgePrior(0.0, 1.0, 0.0, pop_weight=5.0)
    prior = AgePrior(1.0, 1.0, 0.0, pop_weight=0.0, cold_user=cold)
    vecs = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    pub = np.array([0.0, -DAY_S])          # item 1 is a day older
    clicks = np.array([0.0, 100.0])         # and much clicked
    u = np.array([0.5, 0.0], dtype=np.float32)
    got, _ = rescore_with_prior(prior, u, np.arange(2), vecs, pub, 0.0, 1, clicks=clicks)
    assert got.tolist() == [0]
    got, _ = rescore_with_prior(prior, u, np.arange(2), vecs, pub, 0.0, 1, clicks=clicks, has_history=False)
    assert got.tolist() == [1]
    assert prior.for_user(False) is cold and prior.for_user(True) is prior
    assert AgePrior(0.0, 1.0, 0.0, cold_user=cold).active


def test_prior_json_round_trip_and_old_manifests_still_load():
    prior = AgePrior(0.4, 0.07, 1.0, 0.2, 10, 1.0, 0.9, ctr_weight=0.3, creator_weight=0.1, ctr0=0.02, trend_weight=0.5,
                     cold_user=AgePrior(0.1, 0.07, 1.0, 0.9))
    back = AgePrior.from_json(prior.to_json())
    assert (back.weight, back.pop_weight, back.ctr_weight, back.creator_weight, back.ctr0, back.trend_weight) == \
        (0.4, 0.2, 0.3, 0.1, 0.02, 0.5)
    assert back.cold_user is not None and back.cold_user.pop_weight == 0.9
    old = AgePrior.from_json({"weight": 0.3, "temperature": 0.07, "ref_ts": 0.0, "pop_weight": 0.1})
    assert old.ctr_weight == 0.0 and old.cold_user is None and old.active


def test_fit_recovers_the_tower_weight_with_the_others():
    """Clicks from towers that are over-confident by 2x: the fitted tower weight is ~0.5 and
    the prior's weights are still recovered (``fit_age_prior(fit_tower_weight=True)``)."""
    users, items, _, ts, pub, t = _world(0.0, seed=7)
    rng = np.random.default_rng(8)
    counts = np.broadcast_to(rng.integers(0, 50, len(items)).astype(np.float32), (len(ts), len(items))).copy()
    age = (ts[:, None] - pub[None, :]) / DAY_S
    logit = 0.5 * (users @ items.T / t) - 0.4 * np.maximum(age, 0) + 0.8 * np.log1p(counts)
    logit = np.where(age >= 0, logit, -np.inf)
    p = np.exp(logit - logit.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pos = np.array([rng.choice(len(items), p=row) for row in p])
    w, nll0, nll1 = fit_age_weight(users, items, pos, ts, pub, t, click_counts=counts, fit_scale=True)
    assert w[-1] == pytest.approx(0.5, rel=0.25)
    assert w[0] == pytest.approx(0.4, rel=0.3) and w[1] == pytest.approx(0.8, rel=0.3)
    fixed, _, nll_fixed = fit_age_weight(users, items, pos, ts, pub, t, click_counts=counts)
    assert nll1 < nll_fixed < nll0  # at tower weight 1 the fit is worse


def test_the_popularity_curve_term_bends_the_popularity_term_and_round_trips():
    """``pop2_weight`` adds w * log1p(clicks)**2: the most clicked item can outrank one the
    tower likes more, which the linear term with the same slope at few clicks cannot do."""
    vecs = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    pub = np.zeros(2)
    clicks = np.array([1.0, 400.0])
    u = np.array([3.0, 0.0], dtype=np.float32)
    linear = AgePrior(0.0, 1.0, 0.0, pop_weight=0.3)
    bent = AgePrior(0.0, 1.0, 0.0, pop_weight=0.3, pop2_weight=0.1)
    assert not AgePrior(0.0, 1.0, 0.0).uses_clicks and bent.uses_clicks and AgePrior(0.0, 1.0, 0.0, pop2_weight=0.1).active
    got, _ = rescore_with_prior(linear, u, np.arange(2), vecs, pub, 0.0, 1, clicks=clicks)
    assert got.tolist() == [0]
    got, _ = rescore_with_prior(bent, u, np.arange(2), vecs, pub, 0.0, 1, clicks=clicks)
    assert got.tolist() == [1]
    lc = np.log1p(clicks)
    assert np.allclose(bent.bias(pub, clicks, 0.0), 0.3 * lc + 0.1 * lc * lc)
    back = AgePrior.from_json(AgePrior(0.1, 1.0, 0.0, 0.3, cold_user=bent).to_json())
    assert back.pop2_weight == 0.0 and back.cold_user is not None and back.cold_user.pop2_weight == 0.1
    assert AgePrior.from_json({"weight": 0.3, "temperature": 0.07, "pop_weight": 0.1}).pop2_weight == 0.0  # old bundles


def test_fit_recovers_the_popularity_curve():
    """Clicks drawn with 0.2 * log1p(c) + 0.15 * log1p(c)**2: fitted with the squared feature,
    both weights come back, and the likelihood beats the power-law fit."""
    users, items, _, ts, pub, t = _world(0.0, seed=11)
    rng = np.random.default_rng(12)
    counts = np.broadcast_to(rng.integers(0, 200, len(items)).astype(np.float32), (len(ts), len(items))).copy()
    lc = np.log1p(counts)
    logit = users @ items.T / t + 0.2 * lc + 0.15 * lc * lc
    logit = np.where(ts[:, None] >= pub[None, :], logit, -np.inf)
    p = np.exp(logit - logit.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pos = np.array([rng.choice(len(items), p=row) for row in p])
    w, _, nll = fit_age_weight(users, items, pos, ts, pub, t, click_counts=counts, more_feats=[lc * lc])
    # lc and lc**2 are nearly collinear over the counts' range: the curve is what the data fix
    # (few items have few clicks: the curve is compared from 10 clicks up, relative to there)
    grid = np.log1p(np.array([10.0, 30.0, 60.0, 120.0, 199.0]))
    truth, fitted = 0.2 * grid + 0.15 * grid ** 2, w[1] * grid + w[2] * grid ** 2
    truth, fitted = truth - truth[0], fitted - fitted[0]
    assert w[2] > 0.05
    assert np.abs(fitted - truth).max() < 0.15 * truth.max()
    _, _, nll_power = fit_age_weight(users, items, pos, ts, pub, t, click_counts=counts)
    assert nll < nll_power


def test_a_popularity_curve_alone_still_brings_the_popular_list_into_the_pool():
    from feedrank.retrieval.served import popular_pool_size

    assert popular_pool_size(AgePrior(0.0, 1.0, 0.0), 50) == 0
    assert popular_pool_size(AgePrior(0.0, 1.0, 0.0, pop2_weight=0.1), 50) == 50
    assert popular_pool_size(AgePrior(0.0, 1.0, 0.0, cold_user=AgePrior(0.0, 1.0, 0.0, pop2_weight=0.1)), 50) == 50
