"""The ranker: its dense features, the model's position term, and the training recipe
on synthetic features with planted answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feedrank.config import RankingConfig
from feedrank.evaluation.metrics import auc
from feedrank.ranking.features import FEATURE_NAMES, N_FEATURES, N_POSITIONS, ranking_features, smoothed_ctr
from feedrank.ranking.model import Ranker, build_ranker, score
from feedrank.ranking.train import train_ranker

CTR_COL = FEATURE_NAMES.index("item_ctr_smoothed")


def _inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    imps = rng.integers(0, 1000, n).astype(np.float64)
    return dict(
        tower_sim=rng.uniform(-1, 1, n),
        category_affinity=rng.uniform(0, 1, n),
        item_impressions=imps,
        item_clicks=np.floor(imps * rng.uniform(0, 0.2, n)),
        age_s=rng.uniform(0, 5 * 86400, n),
        user_clicks=rng.integers(0, 50, n).astype(np.float64),
        ts=1_767_225_600.0 + rng.uniform(0, 7 * 86400, n),
    )


# ----------------------------------------------------------------------------- features
def test_features_shape_dtype_and_order():
    x = ranking_features(**_inputs(37), prior_ctr=0.05, prior_weight=20.0)
    assert x.shape == (37, N_FEATURES) and x.dtype == np.float32
    assert len(FEATURE_NAMES) == N_FEATURES
    assert np.isfinite(x).all()
    inp = _inputs(37)
    np.testing.assert_allclose(x[:, FEATURE_NAMES.index("tower_sim")], inp["tower_sim"], rtol=1e-6)
    np.testing.assert_allclose(x[:, FEATURE_NAMES.index("log_item_impressions")], np.log1p(inp["item_impressions"]), rtol=1e-6)
    # cyclical time features lie on the unit circle
    for a, b in (("hour_sin", "hour_cos"), ("weekday_sin", "weekday_cos")):
        r = x[:, FEATURE_NAMES.index(a)] ** 2 + x[:, FEATURE_NAMES.index(b)] ** 2
        np.testing.assert_allclose(r, 1.0, atol=1e-5)


def test_features_empty_input():
    inp = {k: v[:0] for k, v in _inputs(5).items()}
    assert ranking_features(**inp, prior_ctr=0.05, prior_weight=20.0).shape == (0, N_FEATURES)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_features_finite_with_nan_and_inf_inputs():
    bad = np.array([np.nan, np.inf, -np.inf, 0.0, -5.0])
    x = ranking_features(bad, bad, bad, bad, bad, bad, bad, prior_ctr=0.05, prior_weight=20.0)
    assert x.shape == (5, N_FEATURES)
    assert np.isfinite(x).all()
    # and the good row stays what it should be
    assert x[3, FEATURE_NAMES.index("log_item_impressions")] == 0.0
    assert x[3, CTR_COL] == pytest.approx(0.05)


def test_smoothed_ctr_shrinks_to_prior():
    zero = np.zeros(3)
    out = ranking_features(zero, zero, item_impressions=zero, item_clicks=zero, age_s=zero, user_clicks=zero, ts=zero,
                           prior_ctr=0.07, prior_weight=20.0)
    np.testing.assert_allclose(out[:, CTR_COL], 0.07, rtol=1e-6)
    # a few impressions barely move it; many converge to the raw rate
    few = smoothed_ctr(np.array([1.0]), np.array([2.0]), 0.07, 20.0)[0]
    many = smoothed_ctr(np.array([5000.0]), np.array([10_000.0]), 0.07, 20.0)[0]
    assert abs(few - 0.07) < abs(0.5 - 0.07) / 5
    assert many == pytest.approx(0.5, abs=0.002)
    # prior weight 0 is the raw CTR
    assert smoothed_ctr(np.array([3.0]), np.array([10.0]), 0.07, 0.0)[0] == pytest.approx(0.3)


# ----------------------------------------------------------------------------- model
def _random_ranker(seed: int = 0) -> Ranker:
    torch.manual_seed(seed)
    m = build_ranker(n_categories=4, hidden=(16, 8))
    with torch.no_grad():
        m.position_bias.weight.copy_(torch.randn(N_POSITIONS, 1))
    m.eval()
    return m


def test_ranker_output_shape_and_position_none_is_position_zero():
    m = _random_ranker()
    dense = torch.randn(10, N_FEATURES)
    cat = torch.randint(0, 4, (10,))
    with torch.no_grad():
        none = m(dense, cat)
        zero = m(dense, cat, torch.zeros(10, dtype=torch.int64))
    assert none.shape == (10,) and none.dtype == torch.float32
    torch.testing.assert_close(none, zero)
    # score() is sigmoid of the position-0 logit
    np.testing.assert_allclose(score(m, dense.numpy(), cat.numpy()), torch.sigmoid(none).numpy(), rtol=1e-5)


def test_position_term_is_additive_and_keeps_order():
    m = _random_ranker(1)
    dense = torch.randn(50, N_FEATURES)
    cat = torch.randint(0, 4, (50,))
    with torch.no_grad():
        base = m(dense, cat)
        for p in (1, 5, N_POSITIONS - 1, N_POSITIONS + 7):  # past the table: clamped
            at = m(dense, cat, torch.full((50,), p, dtype=torch.int64))
            shift = at - base
            torch.testing.assert_close(shift, torch.full_like(shift, float(shift[0])), atol=1e-5, rtol=0)
            assert torch.equal(torch.argsort(at, descending=True, stable=True), torch.argsort(base, descending=True, stable=True))
        clamped = m(dense, cat, torch.full((50,), N_POSITIONS + 7, dtype=torch.int64))
        last = m(dense, cat, torch.full((50,), N_POSITIONS - 1, dtype=torch.int64))
    torch.testing.assert_close(clamped, last)


def test_normalisation_buffers_are_used_and_saved():
    m = _random_ranker(2)
    m.set_normalisation(torch.full((N_FEATURES,), 3.0), torch.zeros(N_FEATURES))  # std clamped, no div by 0
    assert float(m.std.min()) > 0
    sd = m.state_dict()
    assert "mean" in sd and "std" in sd and "position_bias.weight" in sd
    m2 = build_ranker(4, (16, 8))
    m2.load_state_dict(sd)
    x = torch.randn(5, N_FEATURES)
    c = torch.zeros(5, dtype=torch.int64)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x, c), m2.eval()(x, c))


def test_score_batches_match_one_pass():
    m = _random_ranker(3)
    dense = np.random.default_rng(0).standard_normal((101, N_FEATURES)).astype(np.float32)
    cat = np.arange(101) % 4
    np.testing.assert_allclose(score(m, dense, cat, batch_size=7), score(m, dense, cat), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- training
def _cfg(**kw) -> RankingConfig:
    base = dict(hidden=(32, 16), epochs=3, batch_size=256, lr=5e-3, weight_decay=0.0)
    base.update(kw)
    return RankingConfig(**base)


def test_train_ranker_learns_planted_rule():
    rng = np.random.default_rng(0)
    n = 6000
    dense = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    truth = (dense[:, 0] > 0).astype(np.int64)
    noise = rng.random(n) < 0.1
    labels = np.where(noise, 1 - truth, truth)
    cat = rng.integers(0, 3, n)
    pos = rng.integers(0, 10, n)
    torch.manual_seed(0)
    model, report = train_ranker(_cfg(), dense[:5000], cat[:5000], pos[:5000], labels[:5000], 3,
                                 np.random.default_rng(1), show_progress=False)
    assert report.examples == 5000 and report.positives == int(labels[:5000].sum()) and report.epochs == 3
    assert np.isfinite(report.final_loss)
    s = score(model, dense[5000:], cat[5000:])
    assert auc(truth[5000:], s) > 0.9
    assert auc(labels[5000:], s) > 0.8


def test_train_ranker_rejects_empty():
    with pytest.raises(ValueError, match="impressions"):
        train_ranker(_cfg(), np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64),
                     np.zeros(0, np.int64), 3, np.random.default_rng(0), show_progress=False)


def test_train_ranker_learns_position_bias_separately_from_relevance():
    """Clicks from a position-based model: P(click) = exam(pos) * rel(features).

    The learned position term must fall with position, and the score at a fixed
    position must rank by relevance alone."""
    rng = np.random.default_rng(7)
    n, n_pos = 40_000, 10
    dense = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    rel = 1.0 / (1.0 + np.exp(-(1.5 * dense[:, 0] + 1.0 * dense[:, 1] - 0.5)))
    pos = rng.integers(0, n_pos, n)
    exam = (1.0 / (pos + 1.0)) ** 1.0
    labels = (rng.random(n) < exam * rel).astype(np.int64)
    cat = rng.integers(0, 3, n)
    torch.manual_seed(0)
    model, _ = train_ranker(_cfg(epochs=4, batch_size=512), dense, cat, pos, labels, 3, np.random.default_rng(2),
                            show_progress=False)
    w = model.position_bias.weight.detach().numpy()[:n_pos, 0]
    # falls with position: clearly from top to bottom, and nowhere rises by more than noise
    assert w[0] - w[n_pos - 1] > 1.0, w
    assert (np.diff(w) < 0.1).all(), w
    # the logged examination is 1/(pos+1): the learned term follows log exam closely
    assert np.corrcoef(np.log1p(np.arange(n_pos)), w)[0, 1] < -0.95, w
    # at a fixed position the score orders by relevance
    test = rng.standard_normal((4000, N_FEATURES)).astype(np.float32)
    test_rel = 1.0 / (1.0 + np.exp(-(1.5 * test[:, 0] + 1.0 * test[:, 1] - 0.5)))
    s = score(model, test, rng.integers(0, 3, 4000))
    assert auc(test_rel > np.median(test_rel), s) > 0.85
    # and the position did not leak into the relevance part: at every position, same order
    with torch.no_grad():
        t = torch.from_numpy(test[:200])
        c = torch.zeros(200, dtype=torch.int64)
        ref = torch.argsort(model(t, c), stable=True)
        for p in range(n_pos):
            assert torch.equal(torch.argsort(model(t, c, torch.full((200,), p, dtype=torch.int64)), stable=True), ref)
