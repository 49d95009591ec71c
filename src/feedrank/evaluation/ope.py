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

Intervals (``ope_intervals.py``), chosen by ``method``:

* ``"el"``: empirical likelihood. For IPS and DR it profiles the mean of the per-round terms
  under the side constraint ``E[w] = 1`` (Karampatziakis, Langford, Mineiro, NeurIPS 2020);
  for SNIPS it profiles the self-normalised estimating equation ``E[w (r - v)] = 0``.
  Blockwise over ``clusters`` when given.
* ``"hall"``: the Wald interval with Hall's skewness correction (Hall, JRSS-B 1992) on the
  standard error of the terms (IPS, DR) or of the ratio's linearisation (SNIPS, delta
  method), cluster-robust when ``clusters`` is given.
* ``"normal"``: the plain Wald interval.
* ``"boot-t"``, ``"bca"``, ``"boot-t-vst"``: cluster bootstrap (``ope_bootstrap.py``):
  studentised, bias-corrected and accelerated percentile, and studentised on a
  variance-stabilised scale; every estimator is a ratio of sums (IPS, DR: terms over rounds;
  SNIPS: ``w r`` over ``w``), resampled by cluster (by round without ``clusters``).
* ``"betting"``: the betting interval (``ope_betting.py``; Waudby-Smith & Ramdas, JRSS-B 2024,
  in the off-policy form of Waudby-Smith et al., arXiv 2210.10768), valid at any sample size by
  construction: it needs only rewards in [0, 1], nonnegative weights and ``E[w] = 1``. IPS,
  SNIPS and DR share one interval for V, built from ``w r`` (lower end) and ``w (1 - r)`` (upper
  end): the reward model's variance reduction cannot be bet on without a bound on the weights
  (docs/evaluation.md). Each estimator's interval is widened to contain its own estimate
  (clipped to [0, 1]), so it always lies in [0, 1]. When the two ends cross (the log's mean
  weight far from 1), the interval is the hull of both ends and the estimate, and
  ``Estimate.crossed`` is set.

``"betting"`` is the default (``DEFAULT_METHOD``): on the synthetic world's 150 runs it is
the only method that covers at least 45/50 for IPS, SNIPS and DR in every batch (46-49/50),
at 1.79 times ``el``'s width, which met the rule stated before the runs (docs/evaluation.md).
``"el"`` (the default before) is the shortest of the asymptotic intervals, 11-21% shorter
than Hall's for IPS and DR because ``E[w] = 1`` works as a control variate, but covers only
43/50 for IPS and SNIPS on the issue's seeds; its IPS and DR intervals are centred on the
constrained estimate, so the reported IPS value can sit at an edge (it is always inside).

Importance-weighted click terms are strongly right-skewed (most are 0, a few are large); see
``ope_intervals.py`` and docs/evaluation.md for what each interval does about it and how
well each covers on the synthetic world. Pure numpy (and scipy for EL's root finding);
inputs are aligned (n,) float arrays.

Reference: Dudik, Langford, Li, "Doubly Robust Policy Evaluation and Learning", ICML 2011;
Swaminathan & Joachims, "The Self-Normalized Estimator for Counterfactual Learning", NeurIPS 2015.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from feedrank.errors import SchemaError
from feedrank.evaluation.ope_betting import BETTING_METHOD, dm_betting_interval, ips_betting_interval
from feedrank.evaluation.ope_bootstrap import BOOTSTRAP_METHODS, bootstrap_interval
from feedrank.evaluation.ope_intervals import (INTERVAL_METHODS, check_level, check_method, el_mean_interval,
                                               el_ratio_interval, hall_interval, z_value)

ESTIMATORS = ("ips", "snips", "dr")
DEFAULT_METHOD = "betting"
__all__ = ["DEFAULT_METHOD", "ESTIMATORS", "INTERVAL_METHODS", "Estimate", "direct_method", "doubly_robust",
           "estimate_all", "importance_weights", "interval", "ips", "snips", "z_value"]


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
    method: str = DEFAULT_METHOD  # how the interval was built: one of INTERVAL_METHODS
    # betting only: the raw lower end (from w r) exceeded the raw upper end (from w (1 - r)), i.e.
    # every V was rejected by one side: E[w] = 1 fails in this log or a rare draw. [lo, hi] is
    # then the hull of the two ends and the estimate, not a confidence set proper.
    crossed: bool = False

    def covers(self, truth: float) -> bool:
        return bool(self.lo <= truth <= self.hi)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def interval(est: float, se: float, terms: np.ndarray, level: float, skew_correction: bool = True) -> tuple[float, float]:
    """Wald interval for a mean-like estimate (Hall's skewness correction with the skewness of
    ``terms`` unless ``skew_correction`` is False); see ``ope_intervals.hall_interval``."""
    return hall_interval(est, se, terms, level, skew_correction)


def _options(level: float, method: str, clusters: np.ndarray | None, n: int) -> np.ndarray | None:
    check_level(level)
    check_method(method)
    if clusters is None:
        return None
    c = np.asarray(clusters)
    if c.shape != (n,):
        raise SchemaError(f"clusters: expected shape ({n},), got {c.shape}")
    return c


def _containing(v: float, lo: float, hi: float) -> tuple[float, float, bool]:
    """A betting interval's ends (in [0, 1], possibly crossed) -> (lo, hi, crossed): the smallest
    interval holding both ends and the estimate clipped to [0, 1]; ``crossed`` when lo > hi."""
    c = min(max(v, 0.0), 1.0)
    return min(lo, hi, c), max(lo, hi, c), bool(lo > hi)


def _mean_estimate(name: str, terms: np.ndarray, w: np.ndarray, level: float, clusters: np.ndarray | None,
                   method: str, el_weights: np.ndarray | None,
                   betting: tuple[np.ndarray, np.ndarray] | None = None) -> Estimate:
    """A mean of per-round ``terms`` with its interval; EL uses ``el_weights`` for E[w] = 1; the
    betting interval is built from ``betting`` = (rewards in [0, 1], weights), or from ``terms``
    in [0, 1] when None."""
    n = len(terms)
    v = float(np.mean(terms))
    se = _se_of_mean(terms, clusters)
    if method == BETTING_METHOD:
        lo, hi = (dm_betting_interval(terms, level, clusters) if betting is None
                  else ips_betting_interval(betting[0], betting[1], level, clusters))
        lo, hi, crossed = _containing(v, lo, hi)
        return Estimate(name, v, lo, hi, se, level, n, _ess(w), float(np.max(w)), method, crossed)
    elif method == "el" and n >= 2 and float(np.std(terms)) > 0:
        lo, hi, _ = el_mean_interval(terms, level, el_weights, clusters)
        lo, hi = min(lo, v), max(hi, v)  # the estimate itself is always inside
    elif method in BOOTSTRAP_METHODS and n >= 2 and float(np.std(terms)) > 0:
        lo, hi = bootstrap_interval(method, terms, np.ones(n), level, clusters)
        lo, hi = min(lo, v), max(hi, v)
    else:
        lo, hi = hall_interval(v, se, terms, level, skew_correction=method == "hall")
    return Estimate(name, v, lo, hi, se, level, n, _ess(w), float(np.max(w)), method)


def ips(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray, level: float = 0.9,
        clusters: np.ndarray | None = None, method: str = DEFAULT_METHOD) -> Estimate:
    """Inverse propensity scoring: mean(w r). Inputs (n,); ``clusters`` (n,) optional ids of
    correlated rounds (cluster-robust / blockwise interval); ``method`` one of
    INTERVAL_METHODS. Returns an Estimate."""
    r = np.asarray(reward, dtype=np.float64)
    w = importance_weights(target_prob, propensity)
    n = _check("ips", ("reward", r), ("weights", w))
    clusters = _options(level, method, clusters, n)
    return _mean_estimate("ips", w * r, w, level, clusters, method, w, (r, w))


def snips(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray, level: float = 0.9,
          clusters: np.ndarray | None = None, method: str = DEFAULT_METHOD) -> Estimate:
    """Self-normalised IPS: sum(w r) / sum(w). Interval: EL on E[w (r - v)] = 0, or the delta
    method's standard error (Hall / normal). Inputs (n,)."""
    r = np.asarray(reward, dtype=np.float64)
    w = importance_weights(target_prob, propensity)
    n = _check("snips", ("reward", r), ("weights", w))
    clusters = _options(level, method, clusters, n)
    sw = float(np.sum(w))
    if sw <= 0:
        raise SchemaError("snips: the target policy gives probability 0 to every logged action")
    v = float(np.sum(w * r) / sw)
    wbar = sw / n
    resid = w * (r - v)  # linearisation of the ratio (delta method): se = se(mean(resid)) / mean(w)
    se = _se_of_mean(resid, clusters) / wbar
    if method == BETTING_METHOD:  # the same V as IPS: IPS's betting interval, containing SNIPS's estimate
        lo, hi, crossed = _containing(v, *ips_betting_interval(r, w, level, clusters))
        return Estimate("snips", v, lo, hi, se, level, n, _ess(w), float(np.max(w)), method, crossed)
    elif method == "el" and n >= 2 and float(np.std(resid)) > 0:
        lo, hi = el_ratio_interval(r, w, level, v, clusters)
        lo, hi = min(lo, v), max(hi, v)
    elif method in BOOTSTRAP_METHODS and n >= 2 and float(np.std(resid)) > 0:
        lo, hi = bootstrap_interval(method, w * r, w, level, clusters)
        lo, hi = min(lo, v), max(hi, v)
    else:
        lo, hi = hall_interval(v, se, resid, level, skew_correction=method == "hall")
    return Estimate("snips", v, lo, hi, se, level, n, _ess(w), float(np.max(w)), method)


def doubly_robust(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray,
                  q_logged: np.ndarray, dm: np.ndarray, level: float = 0.9, clusters: np.ndarray | None = None,
                  method: str = DEFAULT_METHOD) -> Estimate:
    """Doubly robust: mean(dm + w (r - q_logged)).

    Args:
        q_logged: (n,) the reward model's prediction for the logged action, q(x_i, a_i).
        dm: (n,) the direct-method term sum_a pi(a | x_i) q(x_i, a).
    """
    r = np.asarray(reward, dtype=np.float64)
    q = np.asarray(q_logged, dtype=np.float64)
    d = np.asarray(dm, dtype=np.float64)
    w = importance_weights(target_prob, propensity)
    n = _check("doubly_robust", ("reward", r), ("weights", w), ("q_logged", q), ("dm", d))
    clusters = _options(level, method, clusters, n)
    return _mean_estimate("dr", d + w * (r - q), w, level, clusters, method, w, (r, w))


def direct_method(dm: np.ndarray, level: float = 0.9, clusters: np.ndarray | None = None,
                  method: str = DEFAULT_METHOD) -> Estimate:
    """The plain direct method mean(dm) (biased by the reward model; no propensities).

    Its interval reflects only the spread over contexts, not the model's error."""
    d = np.asarray(dm, dtype=np.float64)
    n = _check("direct_method", ("dm", d))
    clusters = _options(level, method, clusters, n)
    return _mean_estimate("dm", d, np.ones_like(d), level, clusters, method, None)


def estimate_all(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray,
                 q_logged: np.ndarray | None = None, dm: np.ndarray | None = None,
                 level: float = 0.9, clusters: np.ndarray | None = None,
                 method: str = DEFAULT_METHOD) -> dict[str, Estimate]:
    """IPS and SNIPS, plus DR (and DM) when a reward model's ``q_logged`` and ``dm`` are given."""
    out = {"ips": ips(reward, propensity, target_prob, level, clusters, method),
           "snips": snips(reward, propensity, target_prob, level, clusters, method)}
    if q_logged is not None and dm is not None:
        out["dr"] = doubly_robust(reward, propensity, target_prob, q_logged, dm, level, clusters, method)
        out["dm"] = direct_method(dm, level, clusters, method)
    return out
