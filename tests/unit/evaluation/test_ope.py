"""Off-policy estimators: unbiasedness and interval coverage on a bandit with a known value,
and on the synthetic world against its simulated truth."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.errors import SchemaError
from feedrank.evaluation.ope import direct_method, doubly_robust, estimate_all, ips, snips, z_value
from feedrank.evaluation.ope_synth import TargetPolicy, coverage_check, evaluate_log


def _bandit(rng: np.random.Generator, n: int, n_actions: int = 20):
    """Contexts x in {0, 1}; reward prob r(x, a); logging mu uniform-ish; target pi peaked."""
    x = rng.integers(0, 2, n)
    r_prob = np.stack([np.linspace(0.02, 0.4, n_actions), np.linspace(0.4, 0.02, n_actions)])
    mu = np.full((2, n_actions), 1.0 / n_actions)
    mu[:, :5] *= 2.0
    mu /= mu.sum(axis=1, keepdims=True)
    logits = 8.0 * r_prob
    pi = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    u = rng.random(n)
    a = (u[:, None] > np.cumsum(mu[x], axis=1)).sum(axis=1)
    reward = (rng.random(n) < r_prob[x, a]).astype(float)
    truth = 0.5 * float(np.sum(pi[0] * r_prob[0]) + np.sum(pi[1] * r_prob[1]))
    q = r_prob * 0.8 + 0.02  # a deliberately imperfect reward model
    return reward, mu[x, a], pi[x, a], q[x, a], np.sum(pi[x] * q[x], axis=1), truth


def test_z_value_and_bad_level():
    assert z_value(0.9) == pytest.approx(1.6449, abs=1e-4)
    with pytest.raises(SchemaError):
        z_value(1.5)


def test_estimators_cover_a_known_bandit_value():
    rng = np.random.default_rng(0)
    covered = {"ips": 0, "snips": 0, "dr": 0, "dm": 0}
    errs = {k: [] for k in covered}
    runs = 200
    for _ in range(runs):
        r, p, pi, ql, dm, truth = _bandit(rng, 2000)
        # Hall's interval here (fast); every interval method's coverage: test_ope_intervals.py
        for name, e in estimate_all(r, p, pi, ql, dm, level=0.9, method="hall").items():
            covered[name] += e.covers(truth)
            errs[name].append(e.value - truth)
    for name in ("ips", "snips", "dr"):
        assert 0.84 <= covered[name] / runs <= 0.96, (name, covered[name])
        assert abs(np.mean(errs[name])) < 0.004, name  # (nearly) unbiased
    assert covered["dm"] / runs < 0.5  # the biased reward model alone does not cover
    assert np.std(errs["dr"]) < np.std(errs["ips"])  # DR reduces variance


def test_ignoring_propensities_is_caught():
    rng = np.random.default_rng(1)
    r, p, pi, ql, dm, truth = _bandit(rng, 20000)
    naive = ips(r, np.ones_like(p), np.ones_like(pi))  # plain logged CTR
    assert not naive.covers(truth)
    assert ips(r, p, pi).covers(truth)


def test_bad_inputs_raise():
    with pytest.raises(SchemaError, match="propensity"):
        ips(np.array([1.0, 0.0]), np.array([0.0, 0.5]), np.array([0.5, 0.5]))
    with pytest.raises(SchemaError, match="shape"):
        snips(np.array([1.0, 0.0]), np.array([0.5]), np.array([0.5, 0.5]))
    with pytest.raises(SchemaError, match="non-finite"):
        doubly_robust(np.array([1.0, 0.0]), np.array([0.5, 0.5]), np.array([0.5, 0.5]), np.array([np.nan, 0]), np.zeros(2))
    with pytest.raises(SchemaError, match="no logged rounds"):
        direct_method(np.array([]))


def test_synthetic_world_single_log(tmp_path):
    from feedrank.data.synth import WorldConfig, generate_world

    generate_world(tmp_path / "w", WorldConfig(n_users=2000, n_items=300, n_days=4, seed=3), progress=False)
    got = []
    r = evaluate_log(tmp_path / "w", TargetPolicy(beta=1.0, noise=0.5, seed=3), sample=0.5, seed=3, on_log=got.append)
    assert r["truth"] > 2 * r["logging_truth"]  # the target ranker is much better than logging
    log = got[0]  # the arrays the estimators saw, handed over by the hook
    assert len(log.reward) == r["n_logged"] and log.truth == r["truth"]
    assert float(np.mean(log.target_prob / log.propensity * log.reward)) == pytest.approx(r["estimates"]["ips"]["value"])
    assert r["n_logged"] == pytest.approx(r["n_sessions"] / 2, abs=1)
    for name in ("ips", "snips", "dr"):
        e = r["estimates"][name]
        assert e["lo"] < e["value"] < e["hi"] and e["n"] == r["n_logged"]
    # the EM click model recovers a decreasing examination curve from the log
    theta = np.array(r["pbm_theta"])
    assert theta[0] == 1.0 and theta[1:4].mean() < 0.9 and theta[6:].mean() < theta[1:4].mean()


def test_coverage_over_seeds_on_a_tiny_world():
    """10 seeded worlds (the full check uses 50: `feedrank ope check --seeds 50`)."""
    res = coverage_check(list(range(10)), {"n_users": 3000, "n_items": 400, "n_days": 4},
                         TargetPolicy(beta=1.0, noise=0.5), sample=0.5, level=0.9, show_progress=False)
    s = res["summary"]
    for name in ("ips", "snips", "dr"):
        assert s[name]["coverage"] >= 0.7, (name, s[name])
        assert s[name]["mean_rel_width"] < 1.5, (name, s[name])  # informative, not covering by width
    assert s["dm"]["coverage"] <= 0.2  # the item-only reward model is biased: the check can fail


def test_an_interval_method_that_cannot_be_built_is_noted_not_fatal(tmp_path, monkeypatch):
    """A sparse-click log can leave bootstrap-t with an infinite quantile: the run keeps the
    other methods and says which one failed; only the method asked for is fatal."""
    import feedrank.evaluation.ope_synth as ope_synth
    from feedrank.data.synth import WorldConfig, generate_world

    real = ope_synth.estimate_all

    def flaky(*args, method, **kw):
        if method == "boot-t":
            raise SchemaError("bootstrap-t: the studentised replicates have an infinite quantile")
        return real(*args, method=method, **kw)

    monkeypatch.setattr(ope_synth, "estimate_all", flaky)
    generate_world(tmp_path / "w", WorldConfig(n_users=1500, n_items=200, n_days=3, seed=5), progress=False)
    r = evaluate_log(tmp_path / "w", TargetPolicy(beta=1.0, noise=0.5, seed=5), sample=0.5, seed=5)
    assert "infinite quantile" in r["interval_errors"]["boot-t"]
    assert "boot-t" not in r["estimates"]["ips"]["intervals"] and "el" in r["estimates"]["ips"]["intervals"]
    with pytest.raises(SchemaError, match="infinite quantile"):
        evaluate_log(tmp_path / "w", TargetPolicy(beta=1.0, noise=0.5, seed=5), sample=0.5, seed=5, method="boot-t")
