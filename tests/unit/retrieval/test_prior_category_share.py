"""The category term's estimator of the user's category preference (``CategoryShare``,
``features/history.category_share``): a hand-computed case, the towers' share as its special
case, bad input named, the coordinate search picked by the fit's likelihood, and the
``AgePrior`` JSON round trip (a bundle without the estimator keeps ``category_affinity``)."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.features.history import category_affinity, category_share, population_shares
from feedrank.retrieval.prior import AgePrior
from feedrank.retrieval.prior_terms import CategoryShare, search_category_share

ITEM_CAT = np.array([1, 2, 1, 0])  # item row -> category code
# ladders wider than the defaults (the search's edges, measured in docs/retrieval.md)
WIDE_DECAYS, WIDE_STRENGTHS = (0.95, 0.9, 0.85, 0.7, 0.5, 0.3), (0.25, 0.5, 2.0, 4.0, 8.0, 16.0)


def test_share_matches_a_hand_computed_case():
    # history (most recent last): items 0 (cat 1), 1 (cat 2), 2 (cat 1); newest weighs 1, then 0.5, 0.25
    hist = np.array([[-1, 0, 1, 2], [-1, -1, -1, -1]])
    pi = np.array([0.5, 0.25, 0.25])
    got = category_share(hist, ITEM_CAT, 3, strength=2.0, decay=0.5, population=pi)
    # weights: cat 1 = 1 + 0.25 = 1.25, cat 2 = 0.5; total 1.75; + 2 * pi; / (1.75 + 2)
    assert got[0] == pytest.approx([1.0 / 3.75, 1.75 / 3.75, 1.0 / 3.75])
    assert got[1] == pytest.approx(pi)  # no history: the prior itself
    assert np.allclose(got.sum(axis=1), 1.0) and (got > 0).all()


def test_decay_one_strength_one_uniform_is_the_towers_share():
    rng = np.random.default_rng(0)
    cats = rng.integers(0, 5, 40)
    hist = np.where(rng.random((30, 8)) < 0.3, -1, rng.integers(0, 40, (30, 8)))
    hist = np.sort(hist, axis=1)  # padding on the left
    assert np.allclose(category_share(hist, cats, 5), category_affinity(hist, cats, 5), atol=1e-6)
    # a recency decay moves weight to the newest click's category
    one = np.array([[0, 0, 0, 1]])
    c2 = np.array([0, 1])
    assert category_share(one, c2, 2, decay=0.3)[0, 1] > category_share(one, c2, 2)[0, 1]


@pytest.mark.parametrize("kwargs, match", [
    ({"decay": 0.0}, "decay"), ({"decay": 1.5}, "decay"), ({"strength": 0.0}, "strength"),
    ({"population": np.array([0.5, 0.5])}, "population"), ({"population": np.array([0.0, 0.5, 0.5])}, "population"),
])
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        category_share(np.array([[0, 1]]), ITEM_CAT, 3, **kwargs)


def test_out_of_range_categories_and_shapes_are_named():
    with pytest.raises(ValueError, match="categories must be in 0..1"):
        category_share(np.array([[0, 1]]), ITEM_CAT, 2)
    with pytest.raises(ValueError, match=r"\(Q, L\)"):
        category_share(np.array([0, 1]), ITEM_CAT, 3)
    with pytest.raises(ValueError, match="decay"):
        CategoryShare(1.0, 0.0)


def test_population_shares_are_smoothed_click_shares():
    got = population_shares(np.array([0, 2, 1, 3]), ITEM_CAT, 3)  # categories 1, 1, 2, 0
    assert got == pytest.approx([(1 + 1 / 3) / 5, (2 + 1 / 3) / 5, (1 + 1 / 3) / 5])
    assert population_shares(np.zeros(0, dtype=np.int64), ITEM_CAT, 4) == pytest.approx([0.25] * 4)


def _bowl(decay: float, strength: float, pop_penalty: float = 0.1):
    """A held-out nll with its minimum at (``decay``, ``strength``), recording what was fitted."""
    calls: list[CategoryShare] = []

    def nll(sh: CategoryShare) -> float:
        calls.append(sh)
        return (sh.decay - decay) ** 2 + (np.log(sh.strength) - np.log(strength)) ** 2 + \
            (pop_penalty if sh.population else 0.0)
    return nll, calls


def test_search_follows_the_likelihood_and_keeps_the_towers_share_on_ties():
    pop = np.array([0.2, 0.3, 0.5])
    nll, calls = _bowl(0.7, 2.0)
    fit = search_category_share(nll, pop)
    assert len(calls) == len(fit.tried)  # every fit recorded, none repeated
    assert fit.share == CategoryShare(2.0, 0.7)
    assert fit.nll == pytest.approx(nll(CategoryShare(2.0, 0.7))) and fit.nll_uniform == pytest.approx(nll(CategoryShare()))
    # ordered walks: decays 0.85, 0.7 then 0.5 (rises: stop); strengths 2 then 4 (rises: stop, 0.5 never fitted);
    # then the population prior
    assert [(s["decay"], s["strength"]) for s, _ in fit.tried] == [
        (1.0, 1.0), (0.85, 1.0), (0.7, 1.0), (0.5, 1.0), (0.7, 2.0), (0.7, 4.0), (0.7, 2.0)]
    assert fit.tried[-1][0]["population"] == pytest.approx(list(pop))
    assert search_category_share(lambda sh: 1.0, pop).share == CategoryShare()  # nothing better: the old share
    with_pop = search_category_share(lambda sh: 0.0 if sh.population else 1.0, pop)
    assert with_pop.share.population == pytest.approx(tuple(pop))
    with pytest.raises(ValueError, match="nll"):
        search_category_share(lambda sh: float("nan"), pop)


@pytest.mark.parametrize(("decay", "strength", "want"), [
    (0.92, 12.0, CategoryShare(16.0, 0.9)),   # past the old grid's edges (0.85, 4): the wider ladders reach them
    (0.05, 50.0, CategoryShare(16.0, 0.3)),   # beyond both ladders' far ends: their last step, no more
    (0.99, 0.3, CategoryShare(0.25, 1.0)),    # decay 0.95 rises: stop; strength 2 rises: the downward walk runs
    (1.0, 1.0, CategoryShare()),              # the towers' share is best: one step each way, then the population
])
def test_search_walks_the_ladders_to_their_edges(decay, strength, want):
    nll, calls = _bowl(decay, strength)
    fit = search_category_share(nll, np.array([0.5, 0.5]), WIDE_DECAYS, WIDE_STRENGTHS)
    assert fit.share == want
    assert fit.nll == pytest.approx(min(n for _, n in fit.tried), abs=1e-6)
    assert (fit.nll < fit.nll_uniform) == (want != CategoryShare())


def test_search_walks_through_a_flat_stretch():
    # the nll does not move until decay 0.7 (e.g. the category weight held at 0 near the towers' share)
    fit = search_category_share(lambda sh: 1.0 - max(0.0, 0.85 - sh.decay), np.array([0.5, 0.5]), WIDE_DECAYS)
    assert fit.share.decay == 0.3 and fit.nll == pytest.approx(0.45)
    # the same with the refit's rounding noise on the flat stretch: neither a stop nor a "gain"
    noise = {1.0: 0.0, 0.95: 3e-12, 0.9: -2e-12, 0.85: 4e-12}
    fit = search_category_share(lambda sh: 1.0 - max(0.0, 0.85 - sh.decay) + noise.get(sh.decay, 0.0),
                                np.array([0.5, 0.5]), WIDE_DECAYS)
    assert fit.share.decay == 0.3
    flat = search_category_share(lambda sh: 1.0 + (1e-12 if sh.decay == 0.9 else 0.0), np.array([0.5, 0.5]), WIDE_DECAYS)
    assert flat.share == CategoryShare()  # a rounding-size "gain" does not move the pick


def test_search_stops_at_the_first_rise_and_rejects_bad_ladders():
    nll, _ = _bowl(1.0, 1.0)
    fit = search_category_share(nll, np.array([0.5, 0.5]))
    # 1 + decay 0.85 (rises) + strength 2 (rises) + strength 0.5 (rises) + population
    assert [(s["decay"], s["strength"]) for s, _ in fit.tried] == [(1.0, 1.0), (0.85, 1.0), (1.0, 2.0), (1.0, 0.5), (1.0, 1.0)]
    for bad in ({"decays": (0.9, 1.0)}, {"decays": (0.9, 0.9)}, {"strengths": (1.0, 2.0)}, {"strengths": (-1.0,)}):
        with pytest.raises(ValueError, match="decays|strengths"):
            search_category_share(nll, np.array([0.5, 0.5]), **bad)


def test_prior_json_round_trip_and_old_bundles_keep_the_towers_share():
    share = CategoryShare(2.0, 0.85, (0.2, 0.3, 0.5))
    prior = AgePrior(0.5, 0.15, 0.0, category_weight=0.8, n_categories=3, category_estimator=share,
                     category_search={"nll": 6.3, "nll_uniform": 6.35, "tried": [[CategoryShare().to_json(), 6.35]]})
    back = AgePrior.from_json(prior.to_json())
    assert back == prior
    hist = np.array([[-1, 0, 1, 2]])
    assert np.allclose(back.user_affinity(hist, ITEM_CAT), share.shares(hist, ITEM_CAT, 3))
    assert back.category_share(hist[0], ITEM_CAT) == pytest.approx(back.user_affinity(hist, ITEM_CAT)[0])

    old = prior.to_json()
    del old["category_share"]  # a bundle written before the estimator existed
    legacy = AgePrior.from_json(old)
    assert legacy.category_estimator is None
    assert np.allclose(legacy.user_affinity(hist, ITEM_CAT), category_affinity(hist, ITEM_CAT, 3))
    assert AgePrior(0.5, 0.15, 0.0).category_share(hist[0], ITEM_CAT) is None  # no category term: nothing to pass
