"""The prior's terms for items new to the towers (``NewItemTerms``): signed weights are
recovered by the fit, serving scores them like exact scoring, and they round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.retrieval.prior import DAY_S, AgePrior, NewItemTerms, fit_age_weight, fit_prior_weights, rescore_with_prior


def _clicks(seed: int, intercept: float, tower_extra: float, n_items: int = 200, n_clicks: int = 1500, d: int = 8,
            t: float = 0.2, new_from: float = 15 * DAY_S):
    """Clicks drawn from softmax(u.v/T - 0.3 age + new * (intercept + tower_extra * u.v/T))."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, d)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    pub = rng.uniform(0, 20 * DAY_S, n_items)
    ts = rng.uniform(15 * DAY_S, 20 * DAY_S, n_clicks)
    users = rng.standard_normal((n_clicks, d)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    age = (ts[:, None] - pub[None, :]) / DAY_S
    new = (pub >= new_from).astype(np.float64)[None, :]
    tower = users @ items.T / t
    logit = (1.0 + tower_extra * new) * tower - 0.3 * np.maximum(age, 0) + intercept * new
    logit = np.where(age >= 0, logit, -np.inf)
    p = np.exp(logit - logit.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pos = np.array([rng.choice(n_items, p=row) for row in p])
    return users, items, pos, ts, pub, t, new_from


@pytest.mark.parametrize("intercept", [-1.5, 1.0])
def test_fit_recovers_a_signed_new_item_intercept_and_tower_weight(intercept: float):
    users, items, pos, ts, pub, t, new_from = _clicks(0, intercept, -0.4)
    w, nll0, nll1 = fit_age_weight(users, items, pos, ts, pub, t, fit_scale=True, new_from=new_from)
    # [w_age, new intercept, new age, new tower, tower]
    assert len(w) == 5 and nll1 < nll0
    assert w[0] == pytest.approx(0.3, abs=0.12)
    assert w[1] == pytest.approx(intercept, abs=0.4)
    assert w[3] == pytest.approx(-0.4, abs=0.2)
    assert w[4] == pytest.approx(1.0, abs=0.2)


def test_without_new_item_structure_the_terms_stay_near_zero():
    users, items, pos, ts, pub, t, new_from = _clicks(1, 0.0, 0.0)
    w, _, _ = fit_age_weight(users, items, pos, ts, pub, t, new_from=new_from)
    assert abs(w[1]) < 0.35 and abs(w[2]) < 0.35


def test_lower_bounds_are_validated_and_respected():
    users, items, pos, ts, pub, t, _ = _clicks(2, 0.0, 0.0, n_clicks=300)
    base = (users @ items.T / t).astype(np.float32)
    live = ts[:, None] >= pub[None, :]
    feat = np.broadcast_to((pub >= 15 * DAY_S).astype(np.float32), base.shape)  # no effect in the data
    w, _, _ = fit_prior_weights(base, [feat], live, pos, lower=np.array([0.0]))
    assert w[0] >= 0.0
    with pytest.raises(ValueError, match="lower"):
        fit_prior_weights(base, [feat], live, pos, lower=np.array([1.0]))
    with pytest.raises(ValueError, match="lower"):
        fit_prior_weights(base, [feat], live, pos, lower=np.array([0.0, 0.0]))


def test_new_item_terms_apply_to_new_items_only_and_served_matches_exact():
    rng = np.random.default_rng(3)
    items = rng.standard_normal((50, 4)).astype(np.float32)
    user = rng.standard_normal(4).astype(np.float32)
    pub = np.linspace(0, 10 * DAY_S, 50)
    pub[3] = np.nan  # unknown publish time: never new
    clicks = rng.integers(0, 20, 50).astype(np.float64)
    new = NewItemTerms(new_from=5 * DAY_S, intercept=2.0, age_weight=-0.5, pop_weight=0.3, tower_weight=-0.2)
    plain = AgePrior(0.4, 0.5, 0.0, pop_weight=0.6, tower_weight=0.9)
    prior = AgePrior(0.4, 0.5, 0.0, pop_weight=0.6, tower_weight=0.9, new=new)
    now = 10 * DAY_S
    got = prior.scores(user[None], items, pub, now, clicks=clicks)[0]
    base = plain.scores(user[None], items, pub, now, clicks=clicks)[0]
    is_new = np.nan_to_num(pub, nan=-1.0) >= 5 * DAY_S
    assert np.allclose(got[~is_new], base[~is_new])
    age = (now - pub[is_new]) / DAY_S
    expect = base[is_new] + 2.0 + 0.5 * age + 0.3 * np.log1p(clicks[is_new]) - 0.2 * (items[is_new] @ user) / 0.5
    assert np.allclose(got[is_new], expect, atol=1e-4)
    top, _ = rescore_with_prior(prior, user, np.arange(50), items, pub, now, 10, clicks=clicks)
    assert top.tolist() == np.lexsort((np.arange(50), -got))[:10].tolist()
    assert prior.active and not AgePrior(0.0, 1.0, 0.0, new=NewItemTerms(0.0)).active
    assert AgePrior.from_json(prior.to_json()) == prior
    assert AgePrior.from_json(plain.to_json()).new is None
