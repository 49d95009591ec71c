"""Position bias harvested from a Plackett-Luce logging policy's randomisation."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.errors import SchemaError
from feedrank.evaluation.click_models import fit_pbm, harvest_position_bias


def _pl_log(seed: int, n_feeds: int = 20_000, n_items: int = 60, L: int = 6, eta: float = 0.8):
    """Feeds drawn without replacement from p (Gumbel top-L = Plackett-Luce), clicks from a
    PBM whose attractiveness depends on the user *and* the item, with the policy favouring
    what the user likes (so position and attractiveness are confounded)."""
    rng = np.random.default_rng(seed)
    n_groups = 20
    taste = rng.normal(0.0, 1.0, (n_groups, n_items))
    a = 1.0 / (1.0 + np.exp(-(taste - 1.5)))  # attractiveness (group, item)
    logits = 1.5 * taste + rng.normal(0.0, 0.3, (n_groups, n_items))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # the policy's draw probabilities
    g = rng.integers(0, n_groups, n_feeds)
    keys = np.log(p[g]) + rng.gumbel(size=(n_feeds, n_items))
    feed = np.argsort(-keys, axis=1)[:, :L]  # (F, L) Plackett-Luce order
    pf = np.take_along_axis(p[g], feed, axis=1)
    prop = pf / (1.0 - (np.cumsum(pf, axis=1) - pf))
    exam = (1.0 / (np.arange(L) + 1.0)) ** eta
    click = rng.random((n_feeds, L)) < exam[None, :] * a[g[:, None], feed]
    req = np.repeat(np.arange(n_feeds), L)
    pos = np.tile(np.arange(L), n_feeds)
    return req, pos, feed.ravel(), prop.ravel(), click.ravel().astype(float), exam


def test_harvest_recovers_a_known_examination_curve():
    req, pos, item, prop, click, exam = _pl_log(0)
    h = harvest_position_bias(req, pos, prop, click, level=0.95)
    assert h.theta[0] == 1.0 and len(h.theta) == len(exam)
    err = np.max(np.abs(h.theta - exam))
    assert err < 0.025, (h.theta, exam)
    inside = (h.lo <= exam) & (exam <= h.hi)
    assert inside[1:].sum() >= len(exam) - 2, (h.lo, exam, h.hi)  # 95% intervals on 5 positions
    assert np.all(h.hi - h.lo < 0.1) and np.all(h.pairs == 20_000)
    # the raw CTR ratio is confounded: the policy puts what the user likes on top
    ctr = np.bincount(pos, weights=click) / np.bincount(pos)
    assert np.max(np.abs(ctr / ctr[0] - exam)) > 0.03
    # EM with one attractiveness per item cannot see the user's taste either
    em = fit_pbm(item, pos, click)
    assert np.max(np.abs(em.theta - exam)) > 2 * err
    np.testing.assert_allclose(h.examination(np.array([0, 2, 99])), h.theta[[0, 2, -1]])


def test_harvest_intervals_cover_over_replications():
    exam = None
    covered = []
    for seed in range(12):
        req, pos, _, prop, click, exam = _pl_log(100 + seed, n_feeds=6000, L=3)
        h = harvest_position_bias(req, pos, prop, click, level=0.9)
        covered.extend(((h.lo <= exam) & (exam <= h.hi))[1:])
    assert 0.7 <= np.mean(covered) <= 1.0, np.mean(covered)  # 24 intervals at 90%


def test_harvest_on_uniform_shuffles_is_the_ctr_ratio():
    # uniform draws over 4 items, feeds of 4: every order equally likely, weights constant
    rng = np.random.default_rng(3)
    F, L = 2000, 4
    req = np.repeat(np.arange(F), L)
    pos = np.tile(np.arange(L), F)
    prop = np.tile(1.0 / np.array([4.0, 3.0, 2.0, 1.0]), F)
    click = (rng.random(F * L) < 0.3 / (pos + 1)).astype(float)
    h = harvest_position_bias(req, pos, prop, click)
    ctr = np.bincount(pos, weights=click)
    np.testing.assert_allclose(h.theta, ctr / ctr[0], rtol=1e-9)


def test_harvest_bad_inputs():
    req = np.array([0, 0, 1, 1])
    pos = np.array([0, 1, 0, 1])
    ok_p = np.array([0.2, 0.3, 0.2, 0.3])
    clk = np.array([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(SchemaError, match="non-finite"):
        harvest_position_bias(req, pos, np.array([0.2, np.nan, 0.2, 0.3]), clk)
    with pytest.raises(SchemaError, match="outside"):
        harvest_position_bias(req, pos, np.array([0.2, 0.0, 0.2, 0.3]), clk)
    with pytest.raises(SchemaError, match="aligned"):
        harvest_position_bias(req, pos[:3], ok_p, clk)
    with pytest.raises(SchemaError, match="exactly one impression"):
        harvest_position_bias(req, np.array([0, 2, 0, 1]), ok_p, clk)
    with pytest.raises(SchemaError, match="0 or 1"):
        harvest_position_bias(req, pos, ok_p, np.array([2.0, 0, 0, 0]))
    with pytest.raises(SchemaError, match="not randomised"):  # a deterministic feed (the serving stack's 1.0)
        harvest_position_bias(req, pos, np.ones(4), clk)
    with pytest.raises(SchemaError, match="single position"):
        harvest_position_bias(np.array([0, 1]), np.array([0, 0]), np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    with pytest.raises(SchemaError, match="no click at position 0"):
        harvest_position_bias(req, pos, ok_p, np.array([0.0, 1.0, 0.0, 1.0]))


def test_position_bias_report_and_cli_on_a_synthetic_world(tmp_path):
    import json

    from click.testing import CliRunner

    from feedrank.cli.main import cli
    from feedrank.data.synth import WorldConfig, generate_world
    from feedrank.evaluation.ope_synth import position_bias_report

    generate_world(tmp_path / "w", WorldConfig(n_users=2000, n_items=200, n_days=3, seed=5), progress=False)
    r = position_bias_report(tmp_path / "w", n_positions=4)
    assert r["harvest_theta"][0] == 1.0 and len(r["harvest_theta"]) == 4 == len(r["em_theta"])
    assert r["true_theta"] == pytest.approx([1.0, 0.5743, 0.4152, 0.3299], abs=1e-4)
    # a tiny world has few clicks: only the shape of the answer is checked here (accuracy is
    # the planted test above, and `feedrank ope check` on full-size worlds)
    assert all(lo <= t <= hi for lo, t, hi in zip(r["harvest_lo"], r["harvest_theta"], r["harvest_hi"]))
    assert r["n_feeds"] > 100 and r["harvest_pairs"][1] == r["n_feeds"]
    out = CliRunner().invoke(cli, ["ope", "position-bias", "--data", str(tmp_path / "w"), "--positions", "3", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["harvest_pairs"][1] == r["harvest_pairs"][1]
    bad = CliRunner().invoke(cli, ["ope", "position-bias", "--data", str(tmp_path)])  # not a dataset
    assert bad.exit_code != 0 and "events" in (bad.output + str(bad.exception))


def test_debiased_metrics_take_either_curve():
    from feedrank.evaluation.click_models import debiased_auc, debiased_ndcg, fit_examination

    req, pos, item, prop, click, exam = _pl_log(7, n_feeds=5000)
    scores = np.random.default_rng(7).random(len(click)) + click  # a ranker that mostly knows the clicks
    vals = {}
    for method in ("em", "harvest"):
        curve = fit_examination(method, item, pos, click, requests=req, propensities=prop)
        e = curve.examination(pos)
        vals[method] = (debiased_auc(click, scores, e), debiased_ndcg(click, scores, req, e, k=6))
        assert curve.theta[0] == 1.0 and 0.5 < vals[method][0] <= 1.0
    assert vals["em"][0] == pytest.approx(vals["harvest"][0], abs=0.05)
    with pytest.raises(SchemaError, match="needs requests"):
        fit_examination("harvest", item, pos, click)
    with pytest.raises(SchemaError, match="must be one of"):
        fit_examination("dbn", item, pos, click)
