"""Which examination curve the debiased metrics and the report use: harvested from a
randomised log, EM otherwise, with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.errors import SchemaError
from feedrank.evaluation.click_models import complete_feeds, examination_for_log


def _pl_log(seed: int, n_feeds: int = 20_000, n_items: int = 60, L: int = 6, eta: float = 0.8):
    """Plackett-Luce feeds (Gumbel top-L) from a policy that favours what each user group
    likes, clicks from a PBM with exam(k) = (1 / (k + 1)) ** eta (as in test_click_models_harvest)."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(0.0, 1.0, (20, n_items))
    a = 1.0 / (1.0 + np.exp(-(taste - 1.5)))
    p = np.exp(1.5 * taste) / np.exp(1.5 * taste).sum(axis=1, keepdims=True)
    g = rng.integers(0, 20, n_feeds)
    feed = np.argsort(-(np.log(p[g]) + rng.gumbel(size=(n_feeds, n_items))), axis=1)[:, :L]
    pf = np.take_along_axis(p[g], feed, axis=1)
    prop = pf / (1.0 - (np.cumsum(pf, axis=1) - pf))
    exam = (1.0 / (np.arange(L) + 1.0)) ** eta
    click = rng.random((n_feeds, L)) < exam[None, :] * a[g[:, None], feed]
    return (np.repeat(np.arange(n_feeds), L), np.tile(np.arange(L), n_feeds), feed.ravel(), prop.ravel(),
            click.ravel().astype(float), exam)


def test_randomised_log_gets_the_harvested_curve():
    req, pos, item, prop, click, exam = _pl_log(0, n_feeds=12_000)
    # a feed cut by the time split (its slot 0 missing) is left out, not a reason to give up
    cut = req != 0
    ch = examination_for_log(item[cut], pos[cut], click[cut], requests=req[cut], propensities=prop[cut])
    assert ch.method == "harvest" and "harvest" in ch.kind and "11999 complete feeds" in ch.reason
    assert np.max(np.abs(ch.curve.theta - exam)) < 0.03
    assert np.all(ch.curve.theta <= 1.0)
    em = examination_for_log(item, pos, click)
    assert em.method == "em" and "EM" in em.kind
    assert np.max(np.abs(em.curve.theta - exam)) > np.max(np.abs(ch.curve.theta - exam))  # EM is confounded here


def test_deterministic_or_unlogged_orders_fall_back_to_em():
    req, pos, item, _, click, _ = _pl_log(1, n_feeds=3000, L=4)
    fixed = np.where(pos == 0, 1.0, 0.5)  # propensity 1 at the top: slot 0 could not have held another item
    ch = examination_for_log(item, pos, click, requests=req, propensities=fixed)
    assert ch.method == "em" and "cannot be harvested" in ch.reason and "randomised" in ch.reason
    ch = examination_for_log(item, pos, click, requests=req, propensities=np.where(pos == 2, np.nan, 0.1))
    assert ch.method == "em" and "3000 of 12000 impressions have no propensity" in ch.reason
    with pytest.raises(SchemaError, match="must be like positions"):
        examination_for_log(item, pos, click, requests=req[:-1], propensities=fixed)


def test_complete_feeds():
    req = np.array([1, 1, 1, 2, 2, 3, 3, 4, 5, 5])
    pos = np.array([0, 1, 2, 1, 2, 0, 0, 0, -1, 0])
    np.testing.assert_array_equal(complete_feeds(req, pos), [1, 1, 1, 0, 0, 0, 0, 1, 0, 0])


@pytest.fixture(scope="module")
def tiny_prep(tmp_path_factory):
    from feedrank.config import FeedrankConfig
    from feedrank.data.synth import WorldConfig, generate_world
    from feedrank.pipeline.build import prepare

    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(out, WorldConfig(n_users=400, n_items=150, n_days=3, activity_mean=2.0, seed=5), progress=False)
    return prepare(out, FeedrankConfig(), say=lambda m: None)


def test_beyond_uses_the_harvested_curve_on_a_randomised_log(tiny_prep):
    from feedrank.evaluation.beyond import click_model_block, event_propensities, train_examination

    prop = event_propensities(tiny_prep)
    ev = tiny_prep.events
    imp = ev.mask("impression")
    assert len(prop) == len(ev) and np.all((prop[imp] > 0) & (prop[imp] <= 1))
    ch = train_examination(tiny_prep)
    assert ch.method == "harvest"
    block = click_model_block(ch)
    assert block["method"] == "harvest" and block["theta"][0] == 1.0 and len(block["lo"]) == len(block["theta"])
    # without propensities in the dataset: EM, and the report says so
    import dataclasses

    ds = tiny_prep.dataset
    no_prop = dataclasses.replace(tiny_prep, dataset=dataclasses.replace(ds, events=ds.events.drop_columns(["propensity"])))
    assert np.all(np.isnan(event_propensities(no_prop)))
    ch = train_examination(no_prop)
    assert ch.method == "em" and "no propensity" in ch.reason
    assert click_model_block(ch)["kind"] == "position-based (EM)"


def test_report_says_which_curve_was_used():
    from feedrank.evaluation.report import _examination_note

    data = {"model": {"beyond": {"accuracy": {"click_model": {"method": "harvest", "reason": "randomised feeds: 10 complete feeds harvested",
                                                              "theta": [1.0, 0.5]}}}}}
    note = _examination_note(data)
    assert "harvested" in note and "10 complete feeds" in note and "0.500" in note
    data["model"]["beyond"]["accuracy"]["click_model"] = {"method": "em", "reason": "no request ids", "theta": [1.0, 0.4]}
    assert "fitted by EM" in _examination_note(data) and "no request ids" in _examination_note(data)
