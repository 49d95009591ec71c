"""Cluster-bootstrap confidence intervals for off-policy estimates: studentised (bootstrap-t),
BCa, and bootstrap-t on a variance-stabilised scale.

Every estimator here is a ratio of sums, ``V = sum_i a_i / sum_i d_i``: IPS and DR have
``a_i`` = the per-round term and ``d_i = 1``; SNIPS has ``a_i = w_i r_i`` and ``d_i = w_i``.
Rounds are resampled **by cluster** (one user's sessions together, or each round alone when
no clusters are given): per-cluster sums ``A_c, D_c`` are taken once, and a resample is a
vector of multinomial counts ``W_bc`` (C draws with replacement from C clusters), so every
resample's estimate and its cluster-robust standard error are a few matrix products,
``W @ [A, D, A^2, A D, D^2]``:

    V*_b  = (W A)_b / (W D)_b
    se*_b = sqrt(C / (C - 1) * (W (A - V*_b D)^2)_b) / (W D)_b

(the same formula as the analytic cluster-robust / delta-method standard error in
``ope.py``, which is ``se*`` at ``W = 1``). The counts are drawn from a seeded generator,
so a run is reproducible, and the same counts serve every estimator of a log (common
random numbers).

Why these, for importance-weighted clicks. Their terms are mostly 0 with a few large ones;
a log that misses some of the high-weight clicks has a low estimate *and* a low standard
error, so the studentised error ``(V - truth) / se`` is left-skewed and a symmetric
interval under-covers above. The bootstrap replays exactly that: resamples short of large
terms have a low ``V*`` and a small ``se*``, hence a large negative ``t*``.

* ``boot-t`` (Efron 1981; Hall, "The Bootstrap and Edgeworth Expansion", 1992, ch. 3):
  ``t*_b = (V*_b - V) / se*_b``; the interval is ``[V - q_{1-a/2}(t*) se, V - q_{a/2}(t*) se]``.
  Second-order accurate for a smooth function of means; the lower quantile of ``t*`` (large
  and negative here) stretches the upper end.
* ``bca`` (Efron, JASA 1987; DiCiccio & Efron, Stat. Sci. 1996): percentiles of ``V*`` at
  levels moved by the bias correction ``z0 = Phi^-1(share of V*_b < V)`` and the
  acceleration ``a`` from the leave-one-cluster-out jackknife (closed form for a ratio of
  sums: ``V_(-c) = (A - A_c) / (D - D_c)``), ``a = sum u^3 / (6 (sum u^2)^1.5)``,
  ``u_c = mean(V_(-.)) - V_(-c)``. Transformation-respecting, no standard error needed.
* ``boot-t-vst``: bootstrap-t on a variance-stabilised scale (Tibshirani, "Variance
  stabilization and the bootstrap", Biometrika 1988, with a parametric variance function).
  The standard error of a sum of rare, heavy terms grows with the estimate itself
  (``se ∝ V^k``: k = 1/2 for a Poisson count of equal terms). ``k`` is fitted by least
  squares of ``log se*`` on ``log V*`` over the resamples (clipped to [0, 1]), and the
  bootstrap-t runs on ``h(V) = V^(1-k) / (1-k)`` (``log V`` at k = 1), whose standard error
  ``h'(V) se = V^-k se`` no longer moves with V; the end points are mapped back with
  ``h^-1``. Needs ``V > 0`` and every ``V*_b > 0``; otherwise it is plain ``boot-t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from feedrank.errors import SchemaError

BOOTSTRAP_METHODS = ("boot-t", "bca", "boot-t-vst")
N_BOOT = 2000
BOOT_SEED = 20261122
_CHUNK = 250
_counts_cache: dict[tuple[int, int, int], np.ndarray] = {}


@dataclass(frozen=True)
class BootstrapDraws:
    """Bootstrap replicates of a ratio-of-sums estimate. ``value``/``se``: the estimate and its
    cluster-robust standard error on the data; ``values``/``ses`` (B,) the same per resample;
    ``jackknife`` (C,) leave-one-cluster-out estimates (for BCa's acceleration)."""

    value: float
    se: float
    values: np.ndarray
    ses: np.ndarray
    jackknife: np.ndarray


def resample_counts(n_clusters: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """(n_boot, n_clusters) multinomial counts: each row draws ``n_clusters`` clusters with
    replacement. Seeded and cached (the last two shapes), so every estimator of one log gets
    the same resamples. Stored as uint16 (a count above 65535 is impossible for C < 65536 and
    astronomically unlikely above)."""
    if n_clusters < 2:
        raise SchemaError(f"bootstrap: need at least 2 clusters, got {n_clusters}")
    if n_boot < 100:
        raise SchemaError(f"bootstrap: need at least 100 resamples, got {n_boot}")
    key = (int(n_clusters), int(n_boot), int(seed))
    hit = _counts_cache.get(key)
    if hit is not None:
        return hit
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(n_clusters)]))
    out = np.empty((n_boot, n_clusters), dtype=np.uint16)
    for b0 in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - b0)
        draws = rng.integers(0, n_clusters, size=(b, n_clusters)) + (np.arange(b) * n_clusters)[:, None]
        out[b0:b0 + b] = np.bincount(draws.ravel(), minlength=b * n_clusters).reshape(b, n_clusters)
    if len(_counts_cache) >= 2:
        _counts_cache.pop(next(iter(_counts_cache)))
    _counts_cache[key] = out
    return out


def cluster_sums(clusters: np.ndarray | None, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-cluster sums of each (n,) array, or the arrays themselves when ``clusters`` is None."""
    if clusters is None:
        return tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    c = int(codes.max()) + 1
    return tuple(np.bincount(codes, weights=np.asarray(a, dtype=np.float64), minlength=c) for a in arrays)


def ratio_draws(num: np.ndarray, den: np.ndarray, clusters: np.ndarray | None = None, *,
                n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> BootstrapDraws:
    """Bootstrap replicates of ``sum num / sum den`` (inputs (n,), ``den`` >= 0 with a positive
    sum), resampling clusters (``clusters`` (n,) ids, or each round alone when None)."""
    a, d = (np.asarray(x, dtype=np.float64) for x in (num, den))
    if a.ndim != 1 or a.shape != d.shape:
        raise SchemaError(f"bootstrap: num and den must be aligned (n,) arrays, got {a.shape} and {d.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(d))):
        raise SchemaError("bootstrap: non-finite values in the terms")
    if clusters is not None and np.shape(clusters) != a.shape:
        raise SchemaError(f"clusters: expected shape {a.shape}, got {np.shape(clusters)}")
    A, D = cluster_sums(clusters, a, d)
    C = len(A)
    if C < 2:
        raise SchemaError(f"bootstrap: need at least 2 clusters, got {C}")
    sa, sd = float(A.sum()), float(D.sum())
    if sd <= 0:
        raise SchemaError("bootstrap: the denominator sums to 0 (the target policy gives no weight to the log?)")
    v = sa / sd
    scale = C / (C - 1.0)
    se = float(np.sqrt(scale * np.sum((A - v * D) ** 2)) / sd)
    M = np.column_stack([A, D, A * A, A * D, D * D])
    counts = resample_counts(C, n_boot, seed)
    S = np.empty((n_boot, 5))
    for b0 in range(0, n_boot, _CHUNK):
        S[b0:b0 + _CHUNK] = counts[b0:b0 + _CHUNK].astype(np.float64) @ M
    with np.errstate(divide="ignore", invalid="ignore"):
        vb = S[:, 0] / S[:, 1]
        ss = np.maximum(S[:, 2] - 2.0 * vb * S[:, 3] + vb * vb * S[:, 4], 0.0)
        seb = np.sqrt(scale * ss) / S[:, 1]
        jack = (sa - A) / (sd - D)
    ok = np.isfinite(vb)  # a resample whose denominator is 0 (no weight at all) has no estimate
    return BootstrapDraws(value=v, se=se, values=vb[ok], ses=seb[ok], jackknife=jack[np.isfinite(jack)])


def _t_quantiles(t: np.ndarray, level: float) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of studentised replicates. A resample with
    se* = 0 (every term equal, e.g. no click drawn) has t = +-inf, which is kept: it is the
    extreme it looks like. 0/0 (no change, no spread) counts as t = 0."""
    t = np.where(np.isnan(t), 0.0, t)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):  # interpolating between two infinite replicates
        lo_q, hi_q = np.quantile(t, [a, 1.0 - a], method="linear")
    return float(lo_q), float(hi_q)


def boot_t_interval(dr: BootstrapDraws, level: float) -> tuple[float, float]:
    """Studentised (bootstrap-t) interval ``[V - q_hi se, V - q_lo se]``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (dr.values - dr.value) / dr.ses
    q_lo, q_hi = _t_quantiles(t, level)
    if not (np.isfinite(q_lo) and np.isfinite(q_hi)):
        raise SchemaError("bootstrap-t: the studentised replicates have an infinite quantile (too many resamples "
                          "without any spread, e.g. almost no clicks); use another interval")
    return dr.value - q_hi * dr.se, dr.value - q_lo * dr.se


def vst_power(dr: BootstrapDraws) -> float | None:
    """k in ``se ∝ V^k``, fitted over the resamples (least squares on the log scale) and
    clipped to [0, 1]; None when the log scale does not exist (a non-positive V or V*)."""
    ok = dr.ses > 0
    if dr.value <= 0 or np.any(dr.values <= 0) or ok.sum() < 10:
        return None
    x, y = np.log(dr.values[ok]), np.log(dr.ses[ok])
    vx = float(np.var(x))
    if vx <= 0:
        return None
    k = float(np.mean((x - x.mean()) * (y - y.mean())) / vx)
    return float(np.clip(k, 0.0, 1.0))


def boot_t_vst_interval(dr: BootstrapDraws, level: float) -> tuple[float, float]:
    """Bootstrap-t on ``h(V) = V^(1-k)/(1-k)`` (``log V`` at k = 1), k from ``vst_power``;
    plain bootstrap-t when the transformation does not apply."""
    k = vst_power(dr)
    if k is None or k < 1e-6:
        return boot_t_interval(dr, level)

    def h(v: np.ndarray | float) -> np.ndarray | float:
        return np.log(v) if k > 1 - 1e-6 else np.power(v, 1.0 - k) / (1.0 - k)

    def h_inv(y: float) -> float:
        if k > 1 - 1e-6:
            return float(np.exp(y))
        return float(np.power(max(y * (1.0 - k), 0.0), 1.0 / (1.0 - k)))

    with np.errstate(divide="ignore", invalid="ignore"):
        t = (h(dr.values) - h(dr.value)) / (dr.ses * np.power(dr.values, -k))
    q_lo, q_hi = _t_quantiles(t, level)
    if not (np.isfinite(q_lo) and np.isfinite(q_hi)):
        raise SchemaError("bootstrap-t (stabilised): the studentised replicates have an infinite quantile; "
                          "use another interval")
    se_h = dr.se * dr.value ** (-k)
    return h_inv(h(dr.value) - q_hi * se_h), h_inv(h(dr.value) - q_lo * se_h)


def bca_interval(dr: BootstrapDraws, level: float) -> tuple[float, float]:
    """Bias-corrected and accelerated percentile interval (acceleration from the cluster jackknife)."""
    nd = NormalDist()
    vals = dr.values
    share = (np.sum(vals < dr.value) + 0.5 * np.sum(vals == dr.value)) / len(vals)
    share = float(np.clip(share, 1.0 / len(vals), 1.0 - 1.0 / len(vals)))
    z0 = nd.inv_cdf(share)
    u = dr.jackknife.mean() - dr.jackknife
    den = float(np.sum(u * u))
    acc = float(np.sum(u**3) / (6.0 * den**1.5)) if den > 0 else 0.0
    out = []
    for a in ((1.0 - level) / 2.0, (1.0 + level) / 2.0):
        za = nd.inv_cdf(a)
        q = nd.cdf(z0 + (z0 + za) / (1.0 - acc * (z0 + za)))
        out.append(float(np.quantile(vals, float(np.clip(q, 0.0, 1.0)), method="linear")))
    return out[0], out[1]


def bootstrap_interval(method: str, num: np.ndarray, den: np.ndarray, level: float,
                       clusters: np.ndarray | None = None, *, n_boot: int = N_BOOT,
                       seed: int = BOOT_SEED) -> tuple[float, float]:
    """Interval for ``sum num / sum den`` by one of BOOTSTRAP_METHODS, clusters resampled."""
    if method not in BOOTSTRAP_METHODS:
        raise SchemaError(f"bootstrap: method must be one of {', '.join(BOOTSTRAP_METHODS)}, got {method!r}")
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise SchemaError(f"confidence level must be in (0, 1), got {level!r}")
    dr = ratio_draws(num, den, clusters, n_boot=n_boot, seed=seed)
    if method == "boot-t":
        return boot_t_interval(dr, level)
    if method == "boot-t-vst":
        return boot_t_vst_interval(dr, level)
    return bca_interval(dr, level)
