"""The category term's estimator end to end: the fit reads no click at or after the clicks
it fits (its population prior counts only clicks before them; the served one all the train
clicks), and serving (``pipeline/candidates.py``) passes the prior's own estimate, the one
``feedrank eval`` and the bench compute (``AgePrior.user_affinity``); a bundle without the
estimator serves the towers' ``category_affinity`` as before."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch

import feedrank.retrieval.prior as prior_mod
from feedrank.config import load_config
from feedrank.features.history import population_shares
from feedrank.pipeline.artifacts import ModelArtifacts
from feedrank.pipeline.build import prepare
from feedrank.pipeline.recommender import Recommender
from feedrank.retrieval.prior import AgePrior, PriorFitData, fit_age_prior
from feedrank.retrieval.prior_terms import CategoryShare
from feedrank.retrieval.served import RescorePool

NOW = float(os.environ["FEEDRANK_TEST_NOW"])


def _heavy_user(art: ModelArtifacts) -> str:
    return str(art.snapshot.user_ids[int(np.argmax(art.snapshot.user_clicks))])


def _served_affinity(art: ModelArtifacts, prior_json: dict, monkeypatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(affinity serving passed to the prior's rescoring, the towers' affinity, the history)."""
    seen = []
    real = RescorePool.top

    def spy(self, prior, user_vec, ann_rows, *a, **k):
        seen.append(k.get("affinity"))
        return real(self, prior, user_vec, ann_rows, *a, **k)

    monkeypatch.setattr(RescorePool, "top", spy)
    rec = Recommender(replace(art, info={**art.info, "age_prior": prior_json}), clock=lambda: NOW)
    ctx = rec.state.context(_heavy_user(art), NOW)
    seen.clear()  # (building the Recommender may warm the path up)
    with torch.inference_mode():
        *_, aff = rec._retrieve(ctx, NOW)
    assert len(seen) == 1
    return seen[0], aff, ctx.history


def test_serving_passes_the_priors_estimate(art: ModelArtifacts, monkeypatch):
    raw = dict(art.info["age_prior"])
    n_cats = int(raw["n_categories"]) or int(art.two_tower.dims.n_categories)
    pop = np.linspace(1.0, 2.0, n_cats)
    raw.update(category_weight=1.0, n_categories=n_cats,
               category_share=CategoryShare(2.0, 0.5, tuple((pop / pop.sum()).tolist())).to_json())
    served, towers, hist = _served_affinity(art, raw, monkeypatch)
    assert (hist >= 0).sum() >= 2
    bench = AgePrior.from_json(raw).user_affinity(hist[None, :], art.catalog.cat_idx)[0]  # what eval / bench score
    assert served is not None and np.allclose(served, bench)
    assert not np.allclose(served, towers)  # not the towers' uniform share


def test_a_bundle_without_the_estimator_serves_the_towers_share(art: ModelArtifacts, monkeypatch):
    raw = dict(art.info["age_prior"])
    raw.pop("category_share", None)  # written before the estimator existed
    raw.update(category_weight=1.0, n_categories=int(raw["n_categories"]) or int(art.two_tower.dims.n_categories))
    served, towers, _ = _served_affinity(art, raw, monkeypatch)
    assert np.allclose(served, towers, atol=1e-6)
    raw["category_weight"] = 0.0  # no category term: nothing is computed for it
    served, _, _ = _served_affinity(art, raw, monkeypatch)
    assert served is None


def test_the_fitted_estimator_reads_no_click_at_or_after_the_fitted_ones(art: ModelArtifacts, model_dir, monkeypatch):
    cfg = load_config(None, ["retrieval.epochs=1"])
    prep = prepare(model_dir.parent / "world", cfg, say=lambda m: None)
    ev = prep.events
    train = np.zeros(len(ev), dtype=bool)
    train[prep.split.train_idx] = True
    clicks = ev.click_log(np.flatnonzero(train))
    fit_from = float(np.quantile(clicks.ts, 0.7))
    got = {}
    real = prior_mod.search_category_share

    def spy(nll_of, population, **k):
        got["population"] = np.asarray(population)
        return real(nll_of, population, **k)

    def fitted_ts(pick, model, catalog, clicks_, *a, **k):
        got["ts"] = clicks_.ts[pick]
        return real_fit(pick, model, catalog, clicks_, *a, **k)

    real_fit = prior_mod._fit_on_clicks
    monkeypatch.setattr(prior_mod, "search_category_share", spy)
    monkeypatch.setattr(prior_mod, "_fit_on_clicks", fitted_ts)
    n_cats = int(art.two_tower.dims.n_categories)
    prior = fit_age_prior(art.two_tower, prep.catalog, clicks, cfg.retrieval.temperature, cfg.retrieval.history_len,
                          art.item_vectors, None, seed=0, n_clicks=300, category=True, category_estimator="fitted",
                          data=PriorFitData(fit_from=fit_from))
    first = float(got["ts"].min())
    assert first >= fit_from
    before = clicks.items[clicks.ts < first]
    assert len(before) < len(clicks.items)
    assert np.allclose(got["population"], population_shares(before, prep.catalog.cat_idx, n_cats))
    share = prior.category_estimator
    assert share is not None and prior.category_search["nll"] <= prior.category_search["nll_uniform"]
    if share.population is not None:  # served: the shares of every training click
        assert np.allclose(share.population, population_shares(clicks.items, prep.catalog.cat_idx, n_cats))
    back = AgePrior.from_json(prior.to_json())
    assert (back.category_estimator, back.category_search) == (share, prior.category_search)
    with pytest.raises(ValueError, match="category_estimator"):
        fit_age_prior(art.two_tower, prep.catalog, clicks, 0.15, 30, art.item_vectors, None, seed=0, category=True,
                      category_estimator="sharp")
