"""Off-policy estimators of a new policy's value from logged data with propensities.

Setting (a contextual bandit; in a feed, one slot): for each logged round i we have the
context x_i, the action the logging policy mu took (an item at a slot) with its logged
propensity ``p_i = mu(a_i | x_i)``, the observed reward ``r_i`` (click = 1) and the target
policy's probability of that same action ``pi_i = pi(a_i | x_i)``. With importance weights
``w_i = pi_i / p_i``:

    IPS    V = mean(w r)                                    unbiased, high variance
    SNIPS  V = sum(w r) / sum(w)                            self-normalised, slightly biased
    DR     V = mean(dm_i + w_i (r_i - q_i))                 unbiased if p is right, low
                                                            variance if q is good
           dm_i = sum_a pi(a | x_i) q(x_i, a)   (the direct-method term), q_i = q(x_i, a_i)

Confidence intervals use the standard error of the per-round terms (IPS, DR) or of the
ratio's linearisation (SNIPS, delta method), optionally cluster-robust. Importance-weighted
click terms are strongly right-skewed (most are 0, a few are large), and a plain normal
interval then under-covers: an unlucky log that misses a few high-weight clicks has both a
low estimate and a low variance. By default the interval is therefore Hall's
skewness-corrected one (Hall, "On the removal of skewness by transformation", JRSS-B 1992):
with skewness g of the terms, b = g / (3 sqrt(n)) and the transformation
``G(t) = ((1 + b t)^3 - 1) / (3 b) + g / (6 sqrt(n))`` of the studentised mean,

    [est - se * G^-1(z_hi), est - se * G^-1(z_lo)],   G^-1(x) = ((1 + 3 b (x - g/(6 sqrt n)))^(1/3) - 1) / b

which stretches the side the skew hides. ``skew_correction=False`` gives the normal
interval. ``z`` comes from ``statistics.NormalDist``. All functions are pure numpy; inputs
are aligned (n,) float arrays.

Reference: Dudik, Langford, Li, "Doubly Robust Policy Evaluation and Learning", ICML 2011;
Swaminathan & Joachims, "The Self-Normalized Estimator for Counterfactual Learning", NeurIPS 2015.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from feedrank.errors import SchemaError

ESTIMATORS = ("ips", "snips", "dr")


@dataclass(frozen=True)
class Estimate:
    """One estimate of a policy's value with its two-sided confidence interval."""

    estimator: str
    value: float
    lo: float
    hi: float
    stderr: float
    level: float
    n: int
    ess: float  # effective sample size of the weights, (sum w)^2 / sum w^2
    max_weight: float

    def covers(self, truth: float) -> bool:
        return bool(self.lo <= truth <= self.hi)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def z_value(level: float) -> float:
    """Two-sided normal quantile: 1.645 for level 0.90."""
    if not 0.0 < level < 1.0:
        raise SchemaError(f"confidence level must be in (0, 1), got {level}")
    return float(NormalDist().inv_cdf(0.5 + level / 2.0))


def _check(n_name: str, *arrays: tuple[str, np.ndarray]) -> int:
    n = len(arrays[0][1])
    problems = []
    for name, a in arrays:
        if a.ndim != 1 or len(a) != n:
            problems.append(f"{name}: expected shape ({n},), got {a.shape}")
        elif not np.all(np.isfinite(a)):
            problems.append(f"{name}: {int((~np.isfinite(a)).sum())} non-finite value(s)")
    if n == 0:
        problems.append(f"{n_name}: no logged rounds")
    if problems:
        raise SchemaError(f"{n_name}: bad input", problems)
    return n


def importance_weights(target_prob: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    """w = pi(a|x) / mu(a|x). Raises SchemaError on propensities outside (0, 1] or pi outside [0, 1].

    Returns: (n,) float64.
    """
    pi = np.asarray(target_prob, dtype=np.float64)
    p = np.asarray(propensity, dtype=np.float64)
    _check("importance_weights", ("target_prob", pi), ("propensity", p))
    if np.any(p <= 0) or np.any(p > 1):
        raise SchemaError(f"propensity: {int(((p <= 0) | (p > 1)).sum())} value(s) outside (0, 1]")
    if np.any(pi < 0) or np.any(pi > 1 + 1e-9):
        raise SchemaError(f"target_prob: {int(((pi < 0) | (pi > 1 + 1e-9)).sum())} value(s) outside [0, 1]")
    return pi / p


def _ess(w: np.ndarray) -> float:
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def _se_of_mean(terms: np.ndarray, clusters: np.ndarray | None) -> float:
    """Standard error of mean(terms): i.i.d. rounds, or cluster-robust when ``clusters`` (n,)
    groups correlated rounds (e.g. one user's sessions): sum over clusters of the squared
    within-cluster sum of deviations, times C / (C - 1)."""
    n = len(terms)
    if n < 2:
        return float("inf")
    if clusters is None:
        return float(np.std(terms, ddof=1) / np.sqrt(n))
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    c = int(codes.max()) + 1
    if c < 2:
        return float("inf")
    sums = np.bincount(codes, weights=terms - terms.mean(), minlength=c)
    return float(np.sqrt(np.sum(sums**2) * c / (c - 1)) / n)


def _skewness(terms: np.ndarray) -> float:
    d = terms - terms.mean()
    m2 = float(np.mean(d * d))
    return float(np.mean(d**3) / m2**1.5) if m2 > 0 else 0.0


def interval(est: float, se: float, terms: np.ndarray, level: float, skew_correction: bool = True) -> tuple[float, float]:
    """Two-sided interval for a mean-like estimate with standard error ``se``; ``terms`` (n,)
    are the per-round terms whose skewness drives Hall's correction (module docstring)."""
    z = z_value(level)
    n = len(terms)
    if not skew_correction or n < 3 or not np.isfinite(se):
        return est - z * se, est + z * se
    g = _skewness(terms)
    if abs(g) < 1e-12:
        return est - z * se, est + z * se
    b = g / (3.0 * np.sqrt(n))
    shift = g / (6.0 * np.sqrt(n))

    def g_inv(x: float) -> float:
        return float((np.cbrt(1.0 + 3.0 * b * (x - shift)) - 1.0) / b)

    return est - se * g_inv(z), est - se * g_inv(-z)


def _mean_estimate(name: str, terms: np.ndarray, w: np.ndarray, level: float, clusters: np.ndarray | None = None,
                   skew_correction: bool = True) -> Estimate:
    n = len(terms)
    v = float(np.mean(terms))
    se = _se_of_mean(terms, clusters)
    lo, hi = interval(v, se, terms, level, skew_correction)
    return Estimate(name, v, lo, hi, se, level, n, _ess(w), float(np.max(w)))


def ips(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray, level: float = 0.9,
        clusters: np.ndarray | None = None, skew_correction: bool = True) -> Estimate:
    """Inverse propensity scoring: mean(w r). Inputs (n,); ``clusters`` (n,) optional ids of
    correlated rounds for a cluster-robust interval. Returns an Estimate."""
    r = np.asarray(reward, dtype=np.float64)
    w = importance_weights(target_prob, propensity)
    _check("ips", ("reward", r), ("weights", w))
    return _mean_estimate("ips", w * r, w, level, clusters, skew_correction)


def snips(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray, level: float = 0.9,
          clusters: np.ndarray | None = None, skew_correction: bool = True) -> Estimate:
    """Self-normalised IPS: sum(w r) / sum(w), CI by the delta method. Inputs (n,)."""
    r = np.asarray(reward, dtype=np.float64)
    w = importance_weights(target_prob, propensity)
    n = _check("snips", ("reward", r), ("weights", w))
    sw = float(np.sum(w))
    if sw <= 0:
        raise SchemaError("snips: the target policy gives probability 0 to every logged action")
    v = float(np.sum(w * r) / sw)
    wbar = sw / n
    resid = w * (r - v)  # linearisation of the ratio (delta method): se = se(mean(resid)) / mean(w)
    se = _se_of_mean(resid, clusters) / wbar
    lo, hi = interval(v, se, resid, level, skew_correction)
    return Estimate("snips", v, lo, hi, se, level, n, _ess(w), float(np.max(w)))


def doubly_robust(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray,
                  q_logged: np.ndarray, dm: np.ndarray, level: float = 0.9, clusters: np.ndarray | None = None,
                  skew_correction: bool = True) -> Estimate:
    """Doubly robust: mean(dm + w (r - q_logged)).

    Args:
        q_logged: (n,) the reward model's prediction for the logged action, q(x_i, a_i).
        dm: (n,) the direct-method term sum_a pi(a | x_i) q(x_i, a).
    """
    r = np.asarray(reward, dtype=np.float64)
    q = np.asarray(q_logged, dtype=np.float64)
    d = np.asarray(dm, dtype=np.float64)
    w = importance_weights(target_prob, propensity)
    _check("doubly_robust", ("reward", r), ("weights", w), ("q_logged", q), ("dm", d))
    return _mean_estimate("dr", d + w * (r - q), w, level, clusters, skew_correction)


def direct_method(dm: np.ndarray, level: float = 0.9, clusters: np.ndarray | None = None,
                  skew_correction: bool = True) -> Estimate:
    """The plain direct method mean(dm) (biased by the reward model; no propensities).

    Its interval reflects only the spread over contexts, not the model's error."""
    d = np.asarray(dm, dtype=np.float64)
    _check("direct_method", ("dm", d))
    return _mean_estimate("dm", d, np.ones_like(d), level, clusters, skew_correction)


def estimate_all(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray,
                 q_logged: np.ndarray | None = None, dm: np.ndarray | None = None,
                 level: float = 0.9, clusters: np.ndarray | None = None, skew_correction: bool = True) -> dict[str, Estimate]:
    """IPS and SNIPS, plus DR (and DM) when a reward model's ``q_logged`` and ``dm`` are given."""
    sc = skew_correction
    out = {"ips": ips(reward, propensity, target_prob, level, clusters, sc),
           "snips": snips(reward, propensity, target_prob, level, clusters, sc)}
    if q_logged is not None and dm is not None:
        out["dr"] = doubly_robust(reward, propensity, target_prob, q_logged, dm, level, clusters, sc)
        out["dm"] = direct_method(dm, level, clusters, sc)
    return out
