"""Click models (PBM by EM), position-debiased metrics and the beyond-accuracy metrics."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.errors import SchemaError
from feedrank.evaluation.click_models import debiased_auc, debiased_ndcg, fit_pbm
from feedrank.evaluation.metrics import (
    auc,
    calibration_curve,
    gini,
    intra_list_diversity,
    lorenz_curve,
    ndcg_at_k,
    ndcg_at_k_weighted,
    novelty,
    weighted_auc,
)


def _pbm_log(rng, n_req=6000, n_items=300, k=10, eta=0.8):
    gamma = rng.beta(1.0, 8.0, n_items)
    theta = (1.0 / (np.arange(k) + 1.0)) ** eta
    items = rng.integers(0, n_items, (n_req, k))
    pos = np.broadcast_to(np.arange(k), (n_req, k))
    clicks = rng.random((n_req, k)) < theta[pos] * gamma[items]
    return items.ravel(), pos.ravel(), clicks.ravel().astype(float), theta, gamma


def test_pbm_em_recovers_planted_examination_and_attractiveness():
    rng = np.random.default_rng(0)
    items, pos, clicks, theta, gamma = _pbm_log(rng)
    m = fit_pbm(items, pos, clicks, n_items=len(gamma))
    assert m.theta[0] == 1.0
    np.testing.assert_allclose(m.theta, theta, atol=0.06)
    assert np.corrcoef(m.gamma, gamma)[0, 1] > 0.85
    # naive CTR per position confounds examination with nothing here (random placement), but
    # per item it is biased by where items were shown; EM's product reproduces the click rate
    pred = m.examination(pos) * m.attractiveness(items)
    assert abs(pred.mean() - clicks.mean()) < 0.1 * clicks.mean()


def test_pbm_rejects_bad_input():
    with pytest.raises(SchemaError):
        fit_pbm(np.array([0, 1]), np.array([0, -1]), np.array([1, 0]))
    with pytest.raises(SchemaError):
        fit_pbm(np.array([0, 1]), np.array([0, 1]), np.array([2, 0]))


def test_debiased_metrics_weight_clicks_by_inverse_examination():
    y = np.array([1, 0, 0, 1, 0, 0], dtype=float)
    s = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3])
    g = np.array([0, 0, 0, 1, 1, 1])
    ones = np.ones(6)
    # with every slot examined the debiased metrics are the plain ones
    assert debiased_auc(y, s, ones) == pytest.approx(auc(y, s))
    assert debiased_ndcg(y, s, g, ones, 3) == pytest.approx(ndcg_at_k(y, s, g, 3))
    # a click at a rarely examined slot counts more: here it is the badly ranked one
    exam = np.array([1.0, 1, 1, 0.1, 1, 1])
    assert debiased_auc(y, s, exam) < auc(y, s)
    with pytest.raises(SchemaError):
        debiased_auc(y, s, np.zeros(6))


def test_weighted_auc_and_ndcg_match_unweighted_and_respond_to_weights():
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.3
    s = np.round(rng.random(500) + 0.3 * y, 2)  # ties included
    g = rng.integers(0, 40, 500)
    assert weighted_auc(y, s, np.ones(500)) == pytest.approx(auc(y, s))
    assert weighted_auc(y, s, np.full(500, 3.0)) == pytest.approx(auc(y, s))
    assert ndcg_at_k_weighted(y.astype(float), s, g, 5) == pytest.approx(ndcg_at_k(y, s, g, 5))
    w = np.where(y & (s > 1.0), 5.0, 1.0)  # upweight well-ranked positives
    assert weighted_auc(y, s, w) > auc(y, s)


def test_gini_lorenz_diversity_novelty():
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 8]) == pytest.approx(0.75)
    assert np.isnan(gini([0, 0]))
    x, y = lorenz_curve([0, 0, 0, 8], points=5)
    np.testing.assert_allclose(y, [0, 0, 0, 0, 1])
    # one list all one category, one list all different
    lists = [0, 0, 0, 1, 1, 1]
    cats = ["a", "a", "a", "a", "b", "c"]
    assert intra_list_diversity(lists, cats) == pytest.approx(0.5)
    assert novelty([100, 100], 100) == pytest.approx(0.0)
    assert novelty([1], 1024) == pytest.approx(10.0)


def test_calibration_curve_bins():
    rng = np.random.default_rng(2)
    p = rng.beta(1, 20, 5000)
    y = rng.random(5000) < p
    c = calibration_curve(y, p, 10)
    assert sum(c["count"]) == 5000 and len(c["pred"]) == 10
    assert np.all(np.diff(c["pred"]) > 0)
    assert np.max(np.abs(np.array(c["pred"]) - np.array(c["obs"]))) < 0.05  # calibrated by construction
