"""The ranker: its dense features, the model's position term, and the training recipe
on synthetic features with planted answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feedrank.config import RankingConfig
from feedrank.evaluation.metrics import auc
from feedrank.ranking.features import (
    ENGAGEMENT_FEATURE_NAMES,
    FEATURE_NAMES,
    N_FEATURES,
    N_POSITIONS,
    ranking_features,
    smoothed_ctr,
)
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
    width = 28  # fixed, so the random stream does not move when features are added
    dense = rng.standard_normal((n, width)).astype(np.float32)
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
    test = rng.standard_normal((4000, width)).astype(np.float32)
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


# ----------------------------------------------------------------------------- interactions, heads
@pytest.mark.parametrize("interaction", ["mlp", "dcn", "dot"])
def test_every_interaction_has_both_heads_and_round_trips(interaction):
    from feedrank.ranking.model import predict_heads, ranker_from_description

    torch.manual_seed(0)
    m = build_ranker(5, (16, 8), interaction).eval()
    dense = torch.randn(7, N_FEATURES)
    cat = torch.randint(0, 5, (7,))
    with torch.no_grad():
        click, dwell = m.heads(dense, cat)
        assert click.shape == (7,) and dwell.shape == (7,)
        torch.testing.assert_close(click, m(dense, cat))
    m2 = ranker_from_description(m.describe())
    m2.load_state_dict(m.state_dict())
    lo, dw = predict_heads(m2, dense.numpy(), cat.numpy())
    np.testing.assert_allclose(lo, click.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, dwell.numpy(), rtol=1e-5, atol=1e-6)


def _planted(n: int, seed: int, group_size: int = 10):
    """Impressions of ``group_size`` rows; click iff relevance noise beats a threshold."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    rel = 1.0 / (1.0 + np.exp(-(2.0 * dense[:, 0] - 2.5)))
    labels = (rng.random(n) < rel).astype(np.int64)
    return dense, labels, np.arange(n) // group_size, rng.integers(0, 3, n)


# ----------------------------------------------------------------------------- losses
def test_losses_on_hand_computed_values():
    from feedrank.ranking.losses import listwise_loss, pairwise_loss, pointwise_loss

    s = torch.tensor([2.0, 0.0, 1.0, 3.0])
    y = torch.tensor([1.0, 0.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 1, 1])
    # pairwise: one pair (row 0 over row 1) -> softplus(-2)
    assert float(pairwise_loss(s, y, g)) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-2.0))), rel=1e-5)
    # listwise: group 0 only (group 1 has no click) -> -log softmax([2, 0])[0]
    assert float(listwise_loss(s, y, g)) == pytest.approx(float(-torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]), rel=1e-5)
    assert float(pointwise_loss(s, y, g)) == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(s, y)))
    # no positives: zero, and still differentiable
    z = pairwise_loss(s.requires_grad_(), torch.zeros(4), g)
    assert float(z.detach()) == 0.0
    z.backward()


@pytest.mark.parametrize("loss", ["pointwise", "pairwise", "listwise"])
def test_loss_choice_is_honoured_and_each_learns(loss, monkeypatch):
    import feedrank.ranking.train as tr

    called = []
    real = tr.ranking_loss
    monkeypatch.setattr(tr, "ranking_loss", lambda name, *a: called.append(name) or real(name, *a))
    dense, labels, groups, cat = _planted(8000, 1)
    torch.manual_seed(0)
    model, report = train_ranker(_cfg(loss=loss, epochs=2, interaction="mlp"), dense[:6000], cat[:6000],
                                 np.zeros(6000, np.int64), labels[:6000], 3, np.random.default_rng(0), show_progress=False,
                                 groups=groups[:6000])
    assert set(called) == {loss} and report.loss == loss
    assert auc(labels[6000:], score(model, dense[6000:], cat[6000:])) > 0.8


def test_group_batches_keep_impressions_whole():
    from feedrank.ranking.train import group_batches

    groups = np.repeat(np.arange(50), np.random.default_rng(0).integers(1, 12, 50))
    batches = group_batches(groups, len(groups), 32, np.random.default_rng(1))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(groups)))
    owner = {}
    for b, rows in enumerate(batches):
        for g in np.unique(groups[rows]):
            assert owner.setdefault(int(g), b) == b  # a group never spans two batches


def test_pairwise_and_listwise_need_groups():
    dense, labels, _, cat = _planted(100, 2)
    with pytest.raises(ValueError, match="groups"):
        train_ranker(_cfg(loss="pairwise"), dense, cat, np.zeros(100, np.int64), labels, 3, np.random.default_rng(0),
                     show_progress=False)


# ----------------------------------------------------------------------------- dwell head
def test_dwell_head_learns_log_dwell_of_clicked_rows():
    from feedrank.ranking.model import predict_heads

    dense, labels, groups, cat = _planted(6000, 3)
    log_dwell = np.where(labels > 0, 3.0 + 0.8 * dense[:, 1], np.nan)
    torch.manual_seed(0)
    model, _ = train_ranker(_cfg(epochs=4, dwell_loss_weight=1.0), dense, cat, np.zeros(6000, np.int64), labels, 3,
                            np.random.default_rng(0), show_progress=False, groups=groups, log_dwell=log_dwell)
    _, dw = predict_heads(model, dense, cat)
    assert np.corrcoef(dw[labels > 0], log_dwell[labels > 0])[0, 1] > 0.8


# ----------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_calibration_lowers_ece_and_round_trips(kind):
    from feedrank.evaluation.metrics import expected_calibration_error
    from feedrank.ranking.calibration import Calibrator, fit_calibrator

    rng = np.random.default_rng(0)
    z = rng.standard_normal(20000) * 2 - 3
    y = (rng.random(20000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(np.int64)  # logits twice too confident
    raw = 1 / (1 + np.exp(-z))
    cal = fit_calibrator(kind, z[:10000], y[:10000])
    before = expected_calibration_error(y[10000:], raw[10000:])
    after = expected_calibration_error(y[10000:], cal.apply(z[10000:]))
    assert after < 0.5 * before, (before, after)
    again = Calibrator.from_dict(cal.to_dict())
    np.testing.assert_allclose(again.apply(z[:100]), cal.apply(z[:100]))
    # monotone: calibration never reverses the order
    s = np.sort(z)
    assert (np.diff(cal.apply(s)) >= -1e-12).all()


# ----------------------------------------------------------------------------- compression, budget
def test_int8_and_distilled_stay_close_to_full():
    from feedrank.ranking.compress import quantize_int8
    from feedrank.ranking.model import logits
    from feedrank.ranking.train import train_distilled

    dense, labels, groups, cat = _planted(12000, 4)
    torch.manual_seed(0)
    cfg = _cfg(epochs=2, distill_hidden=(16,), distill_epochs=3)
    full, _ = train_ranker(cfg, dense[:9000], cat[:9000], np.zeros(9000, np.int64), labels[:9000], 3,
                           np.random.default_rng(0), show_progress=False, groups=groups[:9000])
    small, _ = train_distilled(cfg, full, dense[:9000], cat[:9000], np.random.default_rng(1), show_progress=False)
    q = quantize_int8(full)
    y, d, c = labels[9000:], dense[9000:], cat[9000:]
    a_full = auc(y, logits(full, d, c))
    assert abs(auc(y, logits(q, d, c)) - a_full) < 0.01
    assert abs(auc(y, logits(small, d, c)) - a_full) < 0.02
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters()) / 2


def test_budget_picks_variant_then_shrinks_candidates():
    from feedrank.ranking.compress import CostModel, RankBudget

    b = RankBudget({"full": CostModel(0.2, 0.004), "int8": CostModel(0.2, 0.003), "distilled": CostModel(0.1, 0.001)}, min_n=50)
    assert b.choose(10.0, 2000) == ("full", 2000)        # 8.2 ms fits
    assert b.choose(7.0, 2000) == ("int8", 2000)         # full 8.2 no, int8 6.2 yes
    assert b.choose(2.5, 2000) == ("distilled", 2000)    # 2.1 ms
    assert b.choose(1.1, 2000) == ("distilled", 1000)    # (1.1 - 0.1) / 0.001
    assert b.choose(0.01, 2000) == ("distilled", 50)     # never below min_n
    assert b.choose(0.0, 300) == ("full", 300)           # 0 = off


def test_freshness_and_blend():
    from feedrank.ranking.runtime import blend, freshness

    s = np.array([1.0, 1.0, 1.0])
    age = np.array([0.0, 3600.0 * 24, 3600.0 * 48])
    np.testing.assert_allclose(freshness(s, age, 24.0), np.exp([0.0, -1.0, -2.0]))
    np.testing.assert_array_equal(freshness(s, age, 0.0), s)
    p = np.array([0.1, 0.2])
    np.testing.assert_allclose(blend(p, np.array([1.0, 2.0]), 1.0, 1.0, 0.0), p)
    np.testing.assert_allclose(blend(p, np.array([1.0, 2.0]), 1.0, 0.5, 1.0), 0.5 * p + p * np.exp([0.0, 1.0]))


# ----------------------------------------------------------------------------- fairness
def test_exposure_disparity_measure():
    from feedrank.ranking.fairness import exposure_disparity, rank_in_group

    groups = np.array([0, 0, 0, 1, 1])
    np.testing.assert_array_equal(rank_in_group(np.array([0.1, 0.9, 0.5, 0.0, 1.0]), groups), [2, 0, 1, 1, 0])
    prot = np.array([True, False, False, True, False])
    worst = exposure_disparity(np.array([0.0, 1.0, 0.5, 0.0, 1.0]), groups, prot)   # protected always last
    best = exposure_disparity(np.array([1.0, 0.0, 0.5, 1.0, 0.0]), groups, prot)    # protected always first
    assert worst["exposure_protected"] < worst["exposure_others"] and worst["disparity"] > 0.3
    assert best["exposure_protected"] > best["exposure_others"]
    assert np.isnan(exposure_disparity(np.ones(5), groups, np.zeros(5, bool))["disparity"])


def test_fairness_weight_reduces_exposure_disparity():
    from feedrank.ranking.fairness import exposure_disparity
    from feedrank.ranking.model import logits

    rng = np.random.default_rng(5)
    n = 12000
    dense = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    protected = rng.random(n) < 0.3
    dense[:, 1] = protected  # the model can see the group ...
    rel = 1 / (1 + np.exp(-(1.5 * dense[:, 0] - 1.0 * protected - 2.0)))  # ... and the logs favour the others
    labels = (rng.random(n) < rel).astype(np.int64)
    groups, cat, pos = np.arange(n) // 10, np.zeros(n, np.int64), np.zeros(n, np.int64)
    out = {}
    for w in (0.0, 5.0):
        torch.manual_seed(0)
        m, _ = train_ranker(_cfg(epochs=3, fairness_weight=w, interaction="mlp"), dense[:9000], cat[:9000], pos[:9000],
                            labels[:9000], 1, np.random.default_rng(0), show_progress=False, groups=groups[:9000],
                            protected=protected[:9000])
        z = logits(m, dense[9000:], cat[9000:])
        out[w] = (exposure_disparity(z, groups[9000:], protected[9000:])["disparity"], auc(labels[9000:], z))
    assert out[5.0][0] < 0.7 * out[0.0][0], out
    assert out[5.0][1] > 0.6, out


def test_soft_ranks_match_ranks_and_the_gap_sees_the_measure():
    from feedrank.ranking.fairness import exposure_disparity, rank_in_group
    from feedrank.ranking.losses import exposure_gap, soft_ranks

    s = torch.tensor([0.1, 0.9, 0.5, 0.0, 1.0])
    g = torch.tensor([0, 0, 0, 1, 1])
    np.testing.assert_allclose(soft_ranks(s, g, temperature=1e-3).numpy() - 1,
                               rank_in_group(s.numpy(), g.numpy()), atol=1e-4)
    prot = torch.tensor([True, False, False, True, False])
    worst = torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0], requires_grad=True)   # protected always last
    fair = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0])                        # first once, last once
    gap = exposure_gap(worst, g, prot, temperature=0.05)
    assert gap.item() > 0.05 and exposure_gap(fair, g, prot, temperature=1e-3).item() < gap.item()
    gap.backward()
    assert float(worst.grad[0]) < 0 and float(worst.grad[3]) < 0  # raising a protected row lowers the gap
    d = exposure_disparity(worst.detach().numpy(), g.numpy(), prot.numpy())["disparity"]
    assert abs(gap.item() ** 0.5 - d) < 0.05  # at a low temperature: the measure itself


def test_user_category_features_follow_the_users_feedback():
    from feedrank.ranking.features import Engagement, engagement_features

    n = 4
    eng = Engagement.zeros(n)
    eng.category_ctr[:] = 0.02
    eng.category_click_share[:] = 0.1
    eng.user_clicks[:] = [0, 5, 5, 5]
    eng.user_eimps[:] = [0, 100, 100, 100]
    eng.user_clicks_3d[:] = [0, 5, 5, 1]
    # row 1: clicked this category 4 times in 20 examined impressions; row 2: 20 impressions, no click;
    # row 3: like row 1 but long ago (recent counters decayed away)
    eng.user_cat_clicks[:] = [0, 4, 0, 4]
    eng.user_cat_eimps[:] = [0, 20, 20, 20]
    eng.user_cat_clicks_3d[:] = [0, 4, 0, 0.1]
    eng.user_cat_eimps_3d[:] = [0, 20, 20, 0.5]
    x = engagement_features(eng, np.zeros(n), 0.02, 20.0, 0.0)
    col = {name: x[:, i] for i, name in enumerate(ENGAGEMENT_FEATURE_NAMES)}
    assert np.isfinite(x).all()
    assert col["user_cat_ctr_vs_category"][0] == pytest.approx(0.02)      # cold: the category's CTR
    assert col["user_cat_ctr_vs_category"][1] > 0.1 > col["user_cat_ctr_vs_category"][2]
    assert col["user_cat_ctr_debiased"][1] > col["user_cat_ctr_debiased"][2]
    assert col["log_user_cat_click_share"][1] > col["log_user_cat_click_share"][0] > col["log_user_cat_click_share"][2]
    assert col["log_user_cat_click_share_3d"][1] > col["log_user_cat_click_share_3d"][3]  # taste drifts: recent counts
    assert col["log_user_cat_eimps"][1] == pytest.approx(np.log1p(20))
    assert col["category_ctr"][0] == pytest.approx(0.02)


def test_rankers_ignore_feature_columns_added_after_training():
    from feedrank.ranking.compress import serving_form
    from feedrank.ranking.model import logits

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for hidden in ((8,), (8, 4)):
        m = build_ranker(3, hidden, "mlp", n_features=N_FEATURES - 4)
        dense = rng.standard_normal((20, N_FEATURES)).astype(np.float32)
        cat = rng.integers(0, 3, 20)
        want = logits(m, dense[:, : N_FEATURES - 4], cat)
        np.testing.assert_allclose(logits(m, dense, cat), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logits(serving_form(m), dense, cat), want, rtol=1e-4, atol=1e-5)
