"""Item vectors learned from their first clickers: point in time, the fit finds the signal
when clicks follow a taste the tower does not know, and served = exact scoring."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.retrieval.counters import ItemCounters
from feedrank.retrieval.item_feedback import FeedbackEvents, FeedbackReplay, feedback_feature
from feedrank.retrieval.prior import AgePrior, fit_age_weight, rescore_with_prior


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _events(seed: int, n_items: int = 6, n: int = 200, d: int = 4) -> FeedbackEvents:
    rng = np.random.default_rng(seed)
    ts = np.round(rng.uniform(0, 1000, n))  # rounded: ties, some at the query times
    return FeedbackEvents(rng.integers(0, n_items, n), ts, _unit(rng.standard_normal((n, d))))


@pytest.mark.parametrize("seed", range(3))
def test_means_read_at_t_never_include_clicks_at_or_after_t(seed: int):
    ev = _events(seed)
    rep = FeedbackReplay(6, ev)
    for t in np.sort(np.concatenate([ev.ts[:15], [0.0, 500.5, 2000.0]])):
        rep.advance(t)
        got = rep.means(3.0)
        for i in range(6):
            m = (ev.items == i) & (ev.ts < t)
            want = ev.vecs[m].sum(0) / (m.sum() + 3.0)
            assert np.allclose(got[i], want, atol=1e-6)
    with pytest.raises(ValueError, match="time went back"):
        rep.advance(1.0)


def test_feature_matches_brute_force_and_bad_input_is_named():
    ev = _events(7)
    rng = np.random.default_rng(1)
    q_ts, q_vecs, cols = rng.uniform(0, 1000, 9), _unit(rng.standard_normal((9, 4))), np.array([0, 2, 5])
    got = feedback_feature(ev, 6, q_ts, q_vecs, cols, 2.0)
    for q in range(9):
        before = ev.before(q_ts[q])
        for c, i in enumerate(cols):
            m = before.items == i
            assert got[q, c] == pytest.approx(float(before.vecs[m].sum(0) @ q_vecs[q]) / (m.sum() + 2.0), abs=1e-5)
    with pytest.raises(ValueError, match="vecs"):
        FeedbackEvents(np.zeros(3, np.int64), np.zeros(3), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="outside"):
        FeedbackReplay(3, ev)
    with pytest.raises(ValueError, match="strength"):
        FeedbackReplay(6, ev).means(0.0)


def test_the_fit_weights_clicker_vectors_when_the_tower_does_not_know_the_item():
    """Clicks follow hidden item vectors z; the tower's vectors are noise. Earlier clickers'
    mean vector reveals z, so the fitted feedback weight is positive and lowers the nll."""
    rng = np.random.default_rng(0)
    n_items, d, n = 60, 8, 3000
    z = _unit(rng.standard_normal((n_items, d)))
    tower = _unit(rng.standard_normal((n_items, d)))
    users = _unit(rng.standard_normal((n, d)))
    ts = np.sort(rng.uniform(0, 100, n))
    logit = users @ z.T * 6.0
    p = np.exp(logit - logit.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pos = np.array([rng.choice(n_items, p=row) for row in p])
    ev = FeedbackEvents(pos, ts, users)
    fit = slice(n // 2, n)
    feat = feedback_feature(ev, n_items, ts[fit], users[fit], np.arange(n_items), 5.0)
    w, nll0, nll1 = fit_age_weight(users[fit], tower, pos[fit], ts[fit], np.zeros(n_items), 1.0, more_feats=[feat])
    assert w[-1] > 1.0 and nll1 < nll0 - 0.1
    # a feature without signal (clicker vectors shuffled across items) gets a far smaller weight
    noise = FeedbackEvents(rng.permutation(pos), ts, users)
    feat0 = feedback_feature(noise, n_items, ts[fit], users[fit], np.arange(n_items), 5.0)
    w0, _, _ = fit_age_weight(users[fit], tower, pos[fit], ts[fit], np.zeros(n_items), 1.0, more_feats=[feat0])
    assert w0[-1] < 0.5 * w[-1]


def test_served_rescoring_with_feedback_equals_exact_scores_and_pulls_the_clicked_item_up():
    rng = np.random.default_rng(3)
    vecs = _unit(rng.standard_normal((50, 8)))
    user = _unit(rng.standard_normal(8))
    fb = np.zeros((50, 8), np.float32)
    target = int(np.argmin(vecs @ user))  # the tower's worst item, clicked by users like this one
    fb[target] = 0.8 * user
    prior = AgePrior(weight=0.0, temperature=0.1, ref_ts=0.0, feedback_weight=40.0, feedback_strength=5.0)
    c = ItemCounters(np.zeros(50), feedback=fb)
    cand = np.arange(50)
    got, scores = rescore_with_prior(prior, user, cand, vecs, np.zeros(50), 0.0, 5, counters=c)
    exact = prior.scores(user[None], vecs, np.zeros(50), 0.0, counters=c)[0]
    assert got[0] == target
    assert np.allclose(scores, np.sort(exact)[::-1][:5], atol=1e-4)
    plain, _ = rescore_with_prior(prior, user, cand, vecs, np.zeros(50), 0.0, 5, counters=ItemCounters(np.zeros(50)))
    assert target not in plain.tolist()  # without the clicker vectors the term is off
    assert AgePrior.from_json(prior.to_json()) == prior
    assert c.take(np.array([target])).feedback.tolist() == [fb[target].tolist()]
