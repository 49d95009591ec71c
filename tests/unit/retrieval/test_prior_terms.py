"""The prior's further terms: for items new to the towers (``NewItemTerms``: signed weights
recovered by the fit, bounds validated) and the user's category share (``category_weight``:
recovered by the fit, the towers' own affinity input); serving (``rescore_with_prior``,
``RescorePool.top``) scores both like exact scoring, and both round-trip through JSON."""

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
    pos = np.argmax(logit + rng.gumbel(size=logit.shape), axis=1)  # a softmax draw per row (Gumbel-max)
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


def _category_clicks(seed: int, w_cat: float, n_items: int = 200, n_users: int = 1200, d: int = 8, t: float = 0.2,
                     n_cats: int = 6, hist_len: int = 10):
    """Users with histories (-1 padded) of items from their favourite categories; clicks from
    softmax(u.v/T + w_cat * log(share of the item's category in the history))."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, d)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    cats = rng.integers(0, n_cats, n_items)
    users = rng.standard_normal((n_users, d)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    fav = rng.dirichlet(np.full(n_cats, 0.5), n_users)
    hist = np.full((n_users, hist_len), -1, dtype=np.int64)
    for u in range(n_users):
        n = rng.integers(0, hist_len + 1)
        c = rng.choice(n_cats, size=n, p=fav[u])
        hist[u, :n] = [rng.choice(np.flatnonzero(cats == k)) for k in c]
    prior = AgePrior(0.0, t, 0.0, n_categories=n_cats)
    aff = prior.user_affinity(hist, cats)
    logit = users @ items.T / t + w_cat * np.log(aff[:, cats])
    pos = np.argmax(logit + rng.gumbel(size=logit.shape), axis=1)
    return users, items, cats, hist, aff, pos, t


def test_user_affinity_is_the_towers_category_share():
    from feedrank.features.history import category_affinity

    hist = np.array([[0, 1, 1, -1], [-1, -1, -1, -1]])
    cats = np.array([2, 0, 1])
    got = AgePrior(0.0, 1.0, 0.0, n_categories=4).user_affinity(hist, cats)
    assert np.allclose(got, category_affinity(hist, cats, 4))
    assert got.shape == (2, 4) and np.allclose(got[1], 0.25)  # no history: uniform shares, the term is a constant
    assert got[0, 0] > got[0, 2] > got[0, 3]


def test_fit_recovers_the_category_weight_and_serving_scores_it_like_exact():
    users, items, cats, hist, aff, pos, t = _category_clicks(4, 0.8)
    feat = np.log(aff[:, cats]).astype(np.float32)
    ts = np.zeros(len(users))
    w, nll0, nll1 = fit_age_weight(users, items, pos, ts, np.zeros(len(items)), t, more_feats=[feat])
    assert w[1] == pytest.approx(0.8, abs=0.2) and nll1 < nll0
    prior = AgePrior(0.0, t, 0.0, category_weight=float(w[1]), n_categories=int(cats.max()) + 1)
    exact = prior.scores(users[:5], items, np.zeros(len(items)), 0.0, affinity=aff[:5], categories=cats)
    plain = AgePrior(0.0, t, 0.0).scores(users[:5], items, np.zeros(len(items)), 0.0)
    assert np.allclose(exact - plain, w[1] * feat[:5], atol=1e-4)
    for j in range(5):
        top, _ = rescore_with_prior(prior, users[j], np.arange(len(items)), items, np.zeros(len(items)), 0.0, 10,
                                    affinity=aff[j], categories=cats)
        assert top.tolist() == np.lexsort((np.arange(len(items)), -exact[j]))[:10].tolist()
    with pytest.raises(ValueError, match="category"):
        rescore_with_prior(prior, users[0], np.arange(len(items)), items, np.zeros(len(items)), 0.0, 10)
    assert AgePrior.from_json(prior.to_json()) == prior and prior.active


def test_rescore_pool_passes_the_category_term_through():
    from feedrank.retrieval.served import RescorePool

    users, items, cats, hist, aff, _, t = _category_clicks(5, 0.8, n_users=3)
    pub = np.zeros(len(items))
    prior = AgePrior(0.0, t, 0.0, category_weight=1.5, n_categories=int(cats.max()) + 1)
    pool = RescorePool.build((np.arange(0, len(items), 2),), items, pub)
    got, _ = pool.top(prior, users[0], np.arange(1, 40, 2), items, pub, 0.0, 15, affinity=aff[0], categories=cats)
    cand = np.union1d(np.arange(0, len(items), 2), np.arange(1, 40, 2))
    exact = prior.scores(users[:1], items[cand], pub[cand], 0.0, affinity=aff[:1], categories=cats[cand])[0]
    assert got.tolist() == cand[np.lexsort((cand, -exact))][:15].tolist()


def test_newton_skips_columns_no_row_of_a_chunk_can_pick():
    # items live only in a window around each click (time-sorted rows): a chunk of rows sees a slice
    # of the columns; the others (garbage features there) must not move the fit, whatever the chunking
    rng = np.random.default_rng(5)
    q, n = 120, 60
    base = rng.standard_normal((q, n)).astype(np.float32)
    feats = [rng.standard_normal((q, n)).astype(np.float32) for _ in range(2)]
    centre = np.linspace(0, n - 1, q)
    live = np.abs(np.arange(n)[None, :] - centre[:, None]) < 8
    pos = np.array([rng.choice(np.flatnonzero(row)) for row in live])
    garbage = [np.where(live, f, np.float32(1e6)) for f in feats]  # finite, huge where nothing is live
    want = fit_prior_weights(base, feats, live, pos, lower=np.array([-np.inf, 0.0]))
    for chunk in (7, 32, 512):
        got = fit_prior_weights(base, garbage, live, pos, chunk=chunk, lower=np.array([-np.inf, 0.0]))
        assert np.allclose(got[0], want[0], atol=1e-9) and got[1:] == pytest.approx(want[1:], abs=1e-12)
    # a positive outside the live mask still counts (it is made live), as before
    pos2 = pos.copy()
    pos2[0] = n - 1
    w2 = fit_prior_weights(base, feats, live, pos2, chunk=16)
    assert np.isfinite(w2[2]) and w2[2] != pytest.approx(want[2])
