"""Betting confidence intervals for off-policy values: valid by construction, no variance estimate
and no bound on the importance weights needed.

A nonnegative quantity X with mean m0 can be tested by *betting* against ``H0: E[X] = m``: start
with capital 1 and at round i stake a fraction ``lambda_i`` (chosen from rounds < i only) on X_i
exceeding m, so the capital is

    K_t(m) = prod_{i <= t} (1 + lambda_i(m) (X_i - m)),   0 <= lambda_i(m) <= c / m.

Because ``X_i >= 0`` each factor is at least ``1 - c > 0``, and under H0 ``K_t(m)`` is a
nonnegative martingale; by Ville's inequality ``P(sup_t K_t(m) >= 1 / a) <= a``. So
``{m : sup_t K_t(m) < 2 / alpha}`` is a one-sided ``1 - alpha / 2`` lower confidence set,
whatever the tails of X (Waudby-Smith & Ramdas, "Estimating means of bounded random variables
by betting", JRSS-B 2024, arXiv 2010.09686, section 4; the capital is nonincreasing in m, so the
set is ``(L, inf)`` and L is a root, found on a vectorised grid then by ``scipy.optimize.brentq``).

Off-policy form (Waudby-Smith, Wu, Ramdas, Karampatziakis & Mineiro, "Anytime-valid off-policy
inference for contextual bandits", arXiv 2210.10768, section 3): with exact propensities and a
target supported by the logging policy, ``E[w] = 1``, and rewards lie in [0, 1], so

* IPS: ``X = w r >= 0`` has mean V (lower bound), and ``Y = w (1 - r) >= 0`` has mean ``1 - V``
  (a lower bound on E[Y] is an upper bound on V). No bound on w is used; the upper side is
  where ``E[w] = 1`` enters: a log short of high-weight clicks is not short of weight.
* DR, ``phi = dm + w (r - q)`` with q, dm in [0, 1]: ``phi + w = dm + w (1 + r - q) >= 0`` has
  mean ``V + 1`` (since ``E[w (r - q) | x] = V(x) - dm(x)``), and
  ``w (1 + q - r) + (1 - dm) >= 0`` has mean ``1 + dm - V + 1 - dm = 2 - V``.
  Valid, but the shift by w adds the variance of the weights themselves, so on heavy weights
  these terms give a wider interval than IPS's (1.6-1.7 times on the synthetic world), and the
  reward model's control variate ``w q - dm`` cannot be bet on: keeping
  ``1 + lambda (w r - m) - gamma (w q - dm)`` positive for every ``w >= 0`` forces
  ``gamma <= 0``. ``ope.py`` therefore gives DR the IPS terms' interval (``dr_betting_interval``
  is here for comparison: ``benchmarks/ope_betting_variants.py``).
* DM (``dm`` in [0, 1], no weights): ``dm`` and ``1 - dm``.
* SNIPS estimates the same V; its interval is IPS's betting interval. ``ope.py`` widens each
  estimator's interval to contain its own estimate (clipped to [0, 1]).

Bet sizes: the predictable plug-in of Waudby-Smith & Ramdas (their eq. for PrPl-EB, in the
fixed-n form recommended for a confidence interval at a known sample size),
``lambda_i = sqrt(2 log(2 / alpha) / (n sigma2_{i-1}))``, truncated at ``c / m`` (``c = 1/2``),
with the regularised running moments ``mu_i = (1/2 + sum_{j<=i} X_j) / (i + 1)`` and
``sigma2_i = (1/4 + sum_{j<=i} (X_j - mu_j)^2) / (i + 1)``. The capital's running maximum over
t is used (Ville covers the whole path, so this only tightens the interval).

Order: the theory is sequential. ``order="random"`` (default) bets in a seeded random
permutation (the papers' recipe for a fixed batch: i.i.d. rounds stay i.i.d., and the result is
deterministic); ``order="time"`` keeps the given order. In time order the martingale argument
holds with an adaptively updated logging policy, but it covers the running average of the
per-round values: when the value drifts over the period, the capital's running maximum rejects
the period's value at an early round, and per-round time order under-covers (39-41/50 on the
synthetic world, every miss below; docs/evaluation.md).

Clusters (one user's rounds are correlated): with ``clusters``, each cluster c is one bet on its
sums, ``X_c - m n_c`` (``n_c`` its rounds), with ``lambda_c <= c / (m n_max)``, ``n_max`` the
largest cluster of the log. For independent clusters, ``E[X_c - V n_c] = 0`` when V is the
per-round value (``E[sum_{i in c} X_i] = V E[n_c]`` for a population of clusters), so the capital
is a nonnegative martingale *if the bets are predictable*. An earlier version capped at
``c / (m n_c)`` with the current cluster's own size: not predictable, and when a user's value
depends on their activity the lower end missed 20-53% of the time at a nominal 5% (review of
issue 8; ``test_ope_betting.py`` has that setting). ``n_max`` is one number computed from the
whole log before betting: a mild use of the data (it only sets the largest stake, not its
direction), which the papers' fixed-batch recipe also makes with n.

Memory: the end point search evaluates the capital on a grid of candidates in row chunks of at
most ``_CHUNK`` numbers, so it needs O(N) memory whatever the log's size.

Crossing: the lower end comes from ``w r`` and the upper end from ``w (1 - r)``, two separate
one-sided bounds that rely on ``E[w] = 1``. When a log's mean weight is far from 1 they can cross
(lower > upper: every V is rejected by one side). ``betting_interval`` returns the two ends as
they are (clipped to [0, 1]), crossed or not; ``ope.py`` reports the crossing in
``Estimate.crossed`` and gives the hull of the two ends and the estimate.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

from feedrank.errors import SchemaError

BETTING_METHOD = "betting"
BETTING_SEED = 20261122
TRUNCATION = 0.5  # c: bet at most c / m of the capital per unit of (X - m), so every factor is >= 1 - c
ORDERS = ("random", "time")
_PRIOR_MEAN, _PRIOR_VAR = 0.5, 0.25  # the papers' regularisation of the running moments
_GRID = 48
_CHUNK = 1 << 21  # numbers per grid chunk of log_capital (16 MiB of float64 per temporary)


def _check_level(level: float) -> float:
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise SchemaError(f"confidence level must be in (0, 1), got {level!r}")
    return float(level)


def _grouped(x: np.ndarray, clusters: np.ndarray | None, order: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, sizes) in betting order: the rounds themselves (size 1) or per-cluster sums in
    the order of each cluster's first round; permuted by a seeded generator for ``order="random"``."""
    if clusters is None:
        xs, ns = x, np.ones(len(x))
    else:
        c = np.asarray(clusters)
        if c.shape != x.shape:
            raise SchemaError(f"clusters: expected shape {x.shape}, got {c.shape}")
        _, first, codes = np.unique(c, return_index=True, return_inverse=True)
        k = len(first)
        xs = np.bincount(codes, weights=x, minlength=k)
        ns = np.bincount(codes, minlength=k).astype(np.float64)
        by_time = np.argsort(first, kind="stable")
        xs, ns = xs[by_time], ns[by_time]
    if order == "random":
        perm = np.random.default_rng(np.random.SeedSequence([int(seed), len(xs)])).permutation(len(xs))
        xs, ns = xs[perm], ns[perm]
    return xs, ns


def bet_sizes(xs: np.ndarray, ns: np.ndarray, alpha_side: float) -> np.ndarray:
    """Predictable plug-in bets (before truncation): ``lambda_i = sqrt(2 log(1 / alpha_side) /
    (N sigma2_{i-1}))`` from the regularised running mean and variance of the rounds (or of the
    cluster residuals ``X_c - mu n_c``) strictly before i. Returns (N,)."""
    N = len(xs)
    cx, cn = np.cumsum(xs), np.cumsum(ns)
    mu = (_PRIOR_MEAN + cx) / (1.0 + cn)  # mu_i uses rounds <= i
    resid2 = (xs - mu * ns) ** 2
    sig2 = (_PRIOR_VAR + np.cumsum(resid2)) / (np.arange(1, N + 1) + 1.0)  # sigma2_i, rounds <= i
    sig2_prev = np.concatenate([[_PRIOR_VAR], sig2[:-1]])
    return np.sqrt(2.0 * np.log(1.0 / alpha_side) / (N * sig2_prev))


def log_capital(m: np.ndarray, xs: np.ndarray, ns: np.ndarray, lam: np.ndarray, c: float = TRUNCATION,
                n_max: float | None = None) -> np.ndarray:
    """``max_t log K_t(m)`` for each candidate mean in ``m`` (G,): the bets are
    ``min(lam, c / (m n_max))``, ``n_max`` (default ``max(ns)``) one predictable cap for every
    cluster, so each factor ``1 + bet (X - m n)`` is at least ``1 - c``. Nonincreasing in m.
    Evaluated in row chunks of at most ``_CHUNK`` numbers (O(N) memory). Returns (G,)."""
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    nm = float(np.max(ns)) if n_max is None else float(n_max)
    if len(ns) and nm < float(np.max(ns)):
        raise SchemaError(f"betting: n_max {nm} is below the largest cluster ({float(np.max(ns))})")
    out = np.empty(len(m))
    rows = max(1, _CHUNK // max(1, len(xs)))
    for a in range(0, len(m), rows):
        mm = m[a:a + rows, None]
        with np.errstate(divide="ignore"):
            cap = np.where(mm > 0, c / (mm * nm), np.inf)
        bet = np.minimum(lam[None, :], cap)
        path = np.cumsum(np.log1p(bet * (xs[None, :] - mm * ns[None, :])), axis=1)
        out[a:a + rows] = np.maximum(path.max(axis=1), 0.0)  # K_0 = 1
    return out


def betting_lower_bound(x: np.ndarray, alpha_side: float, clusters: np.ndarray | None = None, *,
                        order: str = "random", seed: int = BETTING_SEED, c: float = TRUNCATION) -> float:
    """A ``1 - alpha_side`` lower confidence bound on the per-round mean of nonnegative ``x`` (n,):
    the smallest m that the betting capital does not reject (``sup_t K_t(m) < 1 / alpha_side``).
    With ``clusters``, every cluster's stake is capped with the log's largest cluster size."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise SchemaError(f"betting: expected a non-empty (n,) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise SchemaError(f"betting: {int((~np.isfinite(x)).sum())} non-finite term(s)")
    if np.any(x < 0):
        raise SchemaError(f"betting: {int((x < 0).sum())} negative term(s); the capital needs nonnegative terms")
    if order not in ORDERS:
        raise SchemaError(f"betting: order must be one of {', '.join(ORDERS)}, got {order!r}")
    if not 0.0 < c < 1.0:
        raise SchemaError(f"betting: truncation c must be in (0, 1), got {c!r}")
    if not 0.0 < alpha_side < 1.0:
        raise SchemaError(f"betting: alpha_side must be in (0, 1), got {alpha_side!r}")
    xs, ns = _grouped(x, clusters, order, seed)
    lam = bet_sizes(xs, ns, alpha_side)
    crit = float(np.log(1.0 / alpha_side))
    n_max = float(np.max(ns))  # fixed before betting: a predictable cap for every cluster
    f = lambda m: float(log_capital(np.array([m]), xs, ns, lam, c, n_max)[0]) - crit  # noqa: E731
    if f(0.0) < 0:
        return 0.0  # even m = 0 is not rejected (e.g. no positive term)
    top = float(np.max(xs / ns))  # every factor <= 1 at m >= max X_c / n_c: never rejected
    grid = np.concatenate([[0.0], top * np.geomspace(1e-9, 1.0, _GRID)])
    vals = log_capital(grid, xs, ns, lam, c, n_max) - crit
    k = int(np.nonzero(vals >= 0)[0].max())  # last rejected grid point (vals is nonincreasing)
    if k == len(grid) - 1:
        return top
    return float(brentq(f, grid[k], grid[k + 1], xtol=1e-12 + 1e-9 * grid[k + 1], rtol=1e-12))


def betting_interval(lower_terms: np.ndarray, lower_shift: float, upper_terms: np.ndarray, upper_shift: float,
                     level: float, clusters: np.ndarray | None = None, *, order: str = "random",
                     seed: int = BETTING_SEED, c: float = TRUNCATION) -> tuple[float, float]:
    """Two-sided interval at ``level`` for V from two nonnegative term arrays (n,): ``E[lower_terms]
    = V + lower_shift`` and ``E[upper_terms] = upper_shift - V``; each side at ``(1 - level) / 2``.
    Returns ``(L(lower) - lower_shift, upper_shift - L(upper))``, each clipped to [0, 1]. The two
    ends come from separate one-sided bounds and can cross (lower > upper) when the log's mean
    weight is far from 1; they are returned as they are, for the caller to report."""
    alpha = 1.0 - _check_level(level)
    lo = betting_lower_bound(lower_terms, alpha / 2.0, clusters, order=order, seed=seed, c=c) - lower_shift
    hi = upper_shift - betting_lower_bound(upper_terms, alpha / 2.0, clusters, order=order, seed=seed, c=c)
    return min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0)


def _check_unit(name: str, a: np.ndarray) -> None:
    bad = int(((a < 0) | (a > 1)).sum())
    if bad:
        raise SchemaError(f"betting: {name} must lie in [0, 1] (the interval's validity rests on it); "
                          f"{bad} value(s) outside")


def ips_betting_interval(reward: np.ndarray, weights: np.ndarray, level: float, clusters: np.ndarray | None = None,
                         **kw) -> tuple[float, float]:
    """Betting interval for ``V = E[w r]`` with r in [0, 1], w >= 0 and ``E[w] = 1``: lower bound
    from ``w r``, upper from ``w (1 - r)``. Both ends in [0, 1]; they can cross (lower > upper)
    when the log's mean weight is far from 1 (``betting_interval``)."""
    r, w = np.asarray(reward, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    _check_unit("rewards", r)
    if np.any(w < 0):
        raise SchemaError("betting: importance weights must be nonnegative")
    return betting_interval(w * r, 0.0, w * (1.0 - r), 1.0, level, clusters, **kw)


def dr_betting_interval(reward: np.ndarray, weights: np.ndarray, q_logged: np.ndarray, dm: np.ndarray, level: float,
                        clusters: np.ndarray | None = None, **kw) -> tuple[float, float]:
    """Betting interval for the DR value ``E[dm + w (r - q)]`` with r, q, dm in [0, 1] and ``E[w] = 1``:
    lower from ``dm + w (1 + r - q)`` (mean V + 1), upper from ``w (1 + q - r) + 1 - dm`` (mean 2 - V)."""
    r, w, q, d = (np.asarray(a, dtype=np.float64) for a in (reward, weights, q_logged, dm))
    for name, a in (("rewards", r), ("q_logged", q), ("dm", d)):
        _check_unit(name, a)
    if np.any(w < 0):
        raise SchemaError("betting: importance weights must be nonnegative")
    return betting_interval(d + w * (1.0 + r - q), 1.0, w * (1.0 + q - r) + (1.0 - d), 2.0, level, clusters, **kw)


def dm_betting_interval(dm: np.ndarray, level: float, clusters: np.ndarray | None = None, **kw) -> tuple[float, float]:
    """Betting interval for ``E[dm]`` with dm in [0, 1] (lower from dm, upper from 1 - dm)."""
    d = np.asarray(dm, dtype=np.float64)
    _check_unit("dm", d)
    return betting_interval(d, 0.0, 1.0 - d, 1.0, level, clusters, **kw)
