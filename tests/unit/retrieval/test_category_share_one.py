"""Serving's one-history path of the category estimator (``CategoryShare.one``,
``features.history.category_share_one``) is bitwise the batch estimate the bench and eval
compute; bad rows and a population of the wrong length are named; the search skips a
candidate whose fit fails instead of failing the training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feedrank.features.history import category_share
from feedrank.retrieval.prior import AgePrior
from feedrank.retrieval.prior_terms import CategoryShare, search_category_share


@pytest.mark.parametrize("decay,strength,with_pop", [(1.0, 1.0, False), (0.85, 4.0, False), (0.5, 0.5, True)])
def test_one_history_is_bitwise_the_batch_row(decay: float, strength: float, with_pop: bool):
    rng = np.random.default_rng(0)
    n_cats, n_items, length = 9, 400, 30
    item_cat = rng.integers(0, n_cats, n_items)
    pop = rng.random(n_cats) + 0.1
    share = CategoryShare(strength, decay, tuple((pop / pop.sum()).tolist()) if with_pop else None)
    prior = AgePrior(0.1, 0.15, 0.0, category_weight=1.0, n_categories=n_cats, category_estimator=share)
    for t in range(300):
        n = int(rng.integers(0, length + 1))
        h = np.full(length, -1, dtype=np.int64)
        h[length - n:] = rng.integers(0, n_items, n)
        batch = prior.user_affinity(h[None, :], item_cat)[0]  # what the bench and eval score with
        assert np.array_equal(prior.category_share(h, item_cat), batch), t
        assert np.array_equal(share.one(h, item_cat, n_cats),
                              category_share(h[None, :], item_cat, n_cats, strength, decay,
                                             None if share.population is None else np.asarray(share.population))[0])


def test_bad_rows_and_a_wrong_population_are_named():
    item_cat = np.array([0, 1, 2, 1])
    share = CategoryShare(1.0, 0.85)
    with pytest.raises(ValueError, match="history item rows must be < 4"):
        share.one(np.array([-1, 0, 7]), item_cat, 3)
    with pytest.raises(ValueError, match="history item rows must be < 4"):
        share.shares(np.array([[-1, 0, 7]]), item_cat, 3)
    raw = AgePrior(0.1, 0.15, 0.0, category_weight=1.0, n_categories=3,
                   category_estimator=CategoryShare(1.0, 0.85, (0.5, 0.3, 0.2))).to_json()
    assert AgePrior.from_json(raw).category_estimator.population == (0.5, 0.3, 0.2)
    raw["category_share"]["population"] = [0.5, 0.5]
    with pytest.raises(ValueError, match="population has 2 categories, the prior has n_categories 3"):
        AgePrior.from_json(raw)


def test_a_candidate_whose_fit_fails_is_skipped_but_the_baseline_must_fit():
    def nll_of(share: CategoryShare) -> float:
        if share.decay == 0.7:
            return math.nan
        return 5.0 - 0.1 * (share.decay == 0.85)

    fit = search_category_share(nll_of, np.array([0.5, 0.5]))
    assert fit.share.decay == 0.85 and any(nll is None for _, nll in fit.tried)
    with pytest.raises(ValueError, match="nll is nan"):
        search_category_share(lambda share: math.nan, np.array([0.5, 0.5]))
