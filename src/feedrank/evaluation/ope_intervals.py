"""Confidence intervals for off-policy estimates whose per-round terms are heavy-tailed and skewed.

Importance-weighted click terms ``w r`` are mostly 0 with a few large values. A Wald
interval ``est +- z se`` then under-covers for a structural reason, not for lack of
samples alone: a log that happens to miss some high-weight clicks has both a low estimate
*and* a low standard error, because the standard error is computed from the same few large
terms. The estimate and its standard error are positively correlated (0.45-0.7 on the
synthetic world), so low estimates get intervals that are too short on the upper side.

**Empirical likelihood** (Owen, "Empirical Likelihood", 2001; Qin & Lawless, Ann. Stat.
1994) avoids this. Instead of plugging in the sample variance, it asks, for each candidate
value v, how far the sample's distribution must be tilted (reweighted, ``Q_i``) to have
mean v. The tilt needed to reach a higher v puts more mass on the large terms, and so the
variance is, in effect, evaluated under the hypothesis (like Wilson's score interval for a
proportion, against Wald's). The interval is
``{v : -2 log R(v) + 2 log R(v_hat) <= chi2_1(level)}``, with

    R(v) = max { prod n Q_i : Q_i >= 0, sum Q_i = 1, sum Q_i g_i(v) = 0 }.

Off-policy evaluation also knows something for free: with exact propensities and a target
policy supported by the logging policy, ``E[w] = 1``. The estimating functions
``g_i(v) = (w_i - 1, t_i - v)`` add that as a second constraint, with one parameter v; the
profile statistic above is then still chi2 with 1 degree of freedom (Qin & Lawless 1994,
Corollary 5). A log that is missing high-weight rounds has ``mean(w) < 1``, and the
constraint moves mass back onto them. This is the construction of Karampatziakis, Langford
and Mineiro, "Empirical Likelihood for Contextual Bandits" (NeurIPS 2020), applied to any
mean-type estimator's terms ``t_i`` (IPS: ``w r``; DR: ``dm + w (r - q)``). For SNIPS the
estimating function is the self-normalised one, ``g_i(v) = w_i (r_i - v)``, which does not
assume ``E[w] = 1``.

The dual of R(v) is a concave maximisation over a Lagrange multiplier lambda (dimension 1
or 2), solved here by damped Newton steps on Owen's pseudo-logarithm (finite outside the
convex hull, so the search for the end points never fails). The end points are roots of a
monotone function on each side of the estimate, found by ``scipy.optimize.brentq``.

Also here: Hall's skewness-corrected interval (Hall, JRSS-B 1992), a second-order
correction of the Wald interval kept for comparison. The cluster-bootstrap intervals
(``boot-t``, ``bca``, ``boot-t-vst``) are in ``ope_bootstrap.py``; the betting interval
(``betting``, valid by construction) is in ``ope_betting.py``.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
from scipy.optimize import brentq
from scipy.stats import chi2

from feedrank.errors import SchemaError
from feedrank.evaluation.ope_betting import BETTING_METHOD
from feedrank.evaluation.ope_bootstrap import BOOTSTRAP_METHODS

INTERVAL_METHODS = ("el", "hall", "normal", *BOOTSTRAP_METHODS, BETTING_METHOD)


def z_value(level: float) -> float:
    """Two-sided normal quantile: 1.645 for level 0.90."""
    check_level(level)
    return float(NormalDist().inv_cdf(0.5 + level / 2.0))


def check_level(level: float) -> None:
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise SchemaError(f"confidence level must be in (0, 1), got {level!r}")


def check_method(method: str) -> None:
    if method not in INTERVAL_METHODS:
        raise SchemaError(f"interval method: expected one of {', '.join(INTERVAL_METHODS)}, got {method!r}")


# ---------------------------------------------------------------------------- Wald / Hall
def skewness(terms: np.ndarray) -> float:
    d = terms - terms.mean()
    m2 = float(np.mean(d * d))
    return float(np.mean(d**3) / m2**1.5) if m2 > 0 else 0.0


def hall_interval(est: float, se: float, terms: np.ndarray, level: float, skew_correction: bool = True) -> tuple[float, float]:
    """Wald interval ``est +- z se``, or (``skew_correction``) Hall's transformation of the
    studentised mean with the sample skewness g of ``terms`` (n,): b = g / (3 sqrt n),
    ``G(t) = ((1 + b t)^3 - 1) / (3 b) + g / (6 sqrt n)``, interval
    ``[est - se G^-1(z), est - se G^-1(-z)]``."""
    z = z_value(level)
    n = len(terms)
    if not skew_correction or n < 3 or not np.isfinite(se):
        return est - z * se, est + z * se
    g = skewness(terms)
    if abs(g) < 1e-12:
        return est - z * se, est + z * se
    b = g / (3.0 * np.sqrt(n))
    shift = g / (6.0 * np.sqrt(n))

    def g_inv(x: float) -> float:
        return float((np.cbrt(1.0 + 3.0 * b * (x - shift)) - 1.0) / b)

    return est - se * g_inv(z), est - se * g_inv(-z)


# ---------------------------------------------------------------------------- empirical likelihood
def _pseudo_log(z: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Owen's log*: log z for z >= eps, its second-order Taylor expansion at eps below.
    Returns (value, first derivative, second derivative), each like z."""
    ok = z >= eps
    zs = np.where(ok, z, eps)
    d = (z - eps) / eps
    val = np.where(ok, np.log(zs), np.log(eps) + d - 0.5 * d * d)
    d1 = np.where(ok, 1.0 / zs, (1.0 - d) / eps)
    d2 = np.where(ok, -1.0 / (zs * zs), -1.0 / (eps * eps))
    return val, d1, d2


def el_statistic(g: np.ndarray, lam0: np.ndarray | None = None, counts: np.ndarray | None = None,
                 max_iter: int = 100, tol: float = 1e-9) -> tuple[float, np.ndarray]:
    """``-2 log R`` for the constraint ``E[g] = 0``, g (n, m): ``2 max_lambda sum log*(1 + lambda' g_i)``.

    Concave in lambda; damped Newton with backtracking from ``lam0`` (a warm start), stopped
    when the Newton decrement is below ``tol``. Returns (statistic >= 0, lambda); the
    statistic is large when 0 lies outside the convex hull of the g_i. ``counts`` (rows,)
    are multiplicities when equal rows have been merged."""
    c = np.ones(len(g)) if counts is None else np.asarray(counts, dtype=np.float64)
    n, m = float(c.sum()), g.shape[1]
    eps = 1.0 / n
    lam = np.zeros(m) if lam0 is None else np.array(lam0, dtype=np.float64)
    cols = [np.ascontiguousarray(g[:, k]) for k in range(m)]

    def lin(x: np.ndarray) -> np.ndarray:  # 1 + g x, column by column (no BLAS threads for m <= 2)
        out = 1.0 + cols[0] * x[0]
        for k in range(1, m):
            out += cols[k] * x[k]
        return out

    f, d1, d2 = _pseudo_log(lin(lam), eps)
    val = float((c * f).sum())
    for _ in range(max_iter):
        cd1, cd2 = c * d1, c * d2
        grad = np.array([float((cols[k] * cd1).sum()) for k in range(m)])
        hess = np.array([[float((cols[k] * cols[j] * cd2).sum()) for j in range(m)] for k in range(m)])
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(hess, grad, rcond=None)[0]
        dec = float(grad @ step)  # Newton decrement squared (>= 0: hess is negative definite)
        if not np.isfinite(dec) or dec < tol:
            break
        t = 1.0
        while t > 1e-10:
            f_new, d1_new, d2_new = _pseudo_log(lin(lam + t * step), eps)
            new = float((c * f_new).sum())
            if new >= val - 1e-12 * max(1.0, abs(val)):
                break
            t *= 0.5
        else:
            break
        lam = lam + t * step
        val, d1, d2 = new, d1_new, d2_new
    return max(2.0 * val, 0.0), lam


class _Profile:
    """stat(v) = -2 log R(v) for g(v) = (fixed columns, terms - v * slope), warm-starting
    lambda from the nearest v evaluated before (the end-point search moves v in small steps).
    ``slope`` (n,) defaults to 1 (a mean); the weights give SNIPS's ``w r - v w``."""

    def __init__(self, fixed: np.ndarray | None, terms: np.ndarray, slope: np.ndarray | None = None) -> None:
        self.fixed, self.terms, self.counts, self.slope = fixed, terms, None, slope
        if fixed is None and slope is None:  # one column: merge equal terms (most IPS terms are 0)
            self.terms, counts = np.unique(terms, return_counts=True)
            self.counts = counts.astype(np.float64)
        self.cache: list[tuple[float, np.ndarray]] = []

    def __call__(self, v: float) -> float:
        col = (self.terms - v * (1.0 if self.slope is None else self.slope))[:, None]
        g = col if self.fixed is None else np.column_stack([self.fixed, col])
        lam0 = min(self.cache, key=lambda c: abs(c[0] - v))[1] if self.cache else None
        stat, lam = el_statistic(g, lam0, self.counts)
        self.cache.append((v, lam))
        return stat


def _el_bounds(stat, est: float, scale: float, crit: float, base: float) -> tuple[float, float]:
    """End points of {v : stat(v) - base <= crit} around ``est`` (stat convex-like, minimal near est)."""
    f = lambda v: stat(v) - base - crit  # noqa: E731
    out = []
    for sign in (-1.0, 1.0):
        step = max(scale, 1e-12)
        inner = est
        outer = est + sign * step
        k = 0
        while f(outer) <= 0:
            inner, step = outer, step * 2.0
            outer = est + sign * step
            k += 1
            if k > 60:
                raise SchemaError("empirical likelihood: interval end point not found (degenerate terms?)")
        if f(inner) > 0:  # est itself is outside (only when the constraint set is degenerate)
            out.append(est)
            continue
        a, b = (outer, inner) if sign < 0 else (inner, outer)
        out.append(float(brentq(f, a, b, xtol=1e-4 * step, rtol=1e-10)))
    return out[0], out[1]


def _cluster_sums(clusters: np.ndarray | None, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-cluster sums of each array (blockwise empirical likelihood: one observation per
    cluster of correlated rounds), or the arrays themselves when ``clusters`` is None."""
    if clusters is None:
        return arrays
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    c = int(codes.max()) + 1
    if c < 2:
        raise SchemaError("empirical likelihood: need at least 2 clusters")
    return tuple(np.bincount(codes, weights=a, minlength=c) for a in arrays)


def el_mean_interval(terms: np.ndarray, level: float, weights: np.ndarray | None = None,
                     clusters: np.ndarray | None = None) -> tuple[float, float, float]:
    """Empirical-likelihood interval for ``E[terms]``; with ``weights`` (n,) also imposing
    ``E[weights] = 1`` (the importance weights' known mean); with ``clusters`` (n,) blockwise
    (each cluster's sums are one observation, for rounds correlated within a cluster).

    Returns (lo, hi, point): ``point`` is the maximum-EL estimate (the mean of ``terms``
    without the weight constraint; with it, ``sum Q_i terms_i`` for the Q that satisfies
    ``E_Q[w] = 1`` closest to the empirical distribution)."""
    check_level(level)
    t = np.asarray(terms, dtype=np.float64)
    n = len(t)
    if n < 2:
        raise SchemaError(f"empirical likelihood: need at least 2 rounds, got {n}")
    if float(np.std(t)) == 0:
        raise SchemaError("empirical likelihood: all terms are equal; the interval is degenerate "
                          "(no click, or the target policy has zero weight on every logged action?)")
    crit = float(chi2.ppf(level, 1))
    w = None if weights is None else np.asarray(weights, dtype=np.float64) - 1.0
    if w is not None and float(np.std(w)) == 0:
        w = None  # constant weights carry no extra information
    ones = np.ones(n)
    if w is None:
        tc, cnt = _cluster_sums(clusters, t, ones)
        fixed, base = None, 0.0
    else:
        tc, cnt, wc = _cluster_sums(clusters, t, ones, w)
        fixed = wc[:, None]
        base = el_statistic(fixed)[0]
    q = np.ones(len(tc)) if w is None else _el_tilt(wc)
    point = float(np.sum(q * tc) / np.sum(q * cnt))
    stat = _Profile(fixed, tc, None if clusters is None else cnt)
    scale = float(np.std(tc - point * cnt) / np.sqrt(len(tc)) / np.mean(cnt))
    lo, hi = _el_bounds(stat, point, scale, crit, base)
    return lo, hi, point


def _el_tilt(w_centred: np.ndarray) -> np.ndarray:
    """Q_i ∝ 1 / (1 + mu w_i), mu solving sum w_i / (1 + mu w_i) = 0: the EL reweighting that
    makes the (centred) weights average to 0. Uniform when no such tilt exists (0 is outside
    the range of the centred weights)."""
    w = w_centred
    if w.min() >= 0 or w.max() <= 0:
        return np.ones(len(w))
    lo_mu, hi_mu = (-1.0 / w.max()) * (1 - 1e-9), (-1.0 / w.min()) * (1 - 1e-9)
    score = lambda mu: float(np.sum(w / (1.0 + mu * w)))  # noqa: E731  decreasing in mu
    mu = float(brentq(score, lo_mu, hi_mu, xtol=1e-14))
    return 1.0 / (1.0 + mu * w)


def el_ratio_interval(reward: np.ndarray, weights: np.ndarray, level: float, est: float,
                      clusters: np.ndarray | None = None) -> tuple[float, float]:
    """EL interval for the self-normalised value v solving ``E[w (r - v)] = 0`` (SNIPS);
    blockwise over ``clusters`` when given."""
    check_level(level)
    r = np.asarray(reward, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if len(r) < 2:
        raise SchemaError(f"empirical likelihood: need at least 2 rounds, got {len(r)}")
    if not np.any(w > 0) or float(np.std(r[w > 0])) == 0:
        raise SchemaError("empirical likelihood: the weighted rewards are all equal; the interval is degenerate")
    crit = float(chi2.ppf(level, 1))
    wr, wc = _cluster_sums(clusters, w * r, w)
    scale = float(np.std(wr - est * wc) / np.sqrt(len(wr)) / max(np.mean(wc), 1e-300))
    return _el_bounds(_Profile(None, wr, slope=wc), est, scale, crit, 0.0)
