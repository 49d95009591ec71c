"""Click models: the position-based model (PBM) estimated by EM, and position-debiased metrics.

PBM: an item i shown at 0-based position k is clicked iff the user examines position k
(probability ``theta[k]``) and finds the item attractive (probability ``gamma[i]``):

    P(click | i, k) = theta[k] * gamma[i]

EM (Chuklin, Markov, de Rijke, "Click Models for Web Search", 2015, ch. 4) treats
examination E and attractiveness A as latent. A click means E = A = 1; for a skipped
impression the posteriors are

    P(E=1 | no click) = theta (1 - gamma) / (1 - theta gamma)
    P(A=1 | no click) = (1 - theta) gamma / (1 - theta gamma)

and the M-step averages them per position (theta) and per item (gamma, with a Beta prior
``(prior_clicks, prior_n)`` so rarely-shown items shrink to the global rate). The model is
identified only up to a scale between theta and gamma; the fit is normalised so that
``theta[0] = 1`` (position 0 is always examined), which matches the synthetic world's
``exam(k) = (1 / (k + 1)) ** eta``.

**From logged randomisation** (``harvest_position_bias``): EM has to untangle examination
from attractiveness with a model of attractiveness (one gamma per item), and anything that
model misses (a user's taste, which also decides what the logging policy puts on top) leaks
into theta. A logging policy that samples its feed leaves exact randomisation to harvest
instead. When the feed is a Plackett-Luce draw without replacement (each slot drawn from
``p(j)`` over the items not yet shown, the logged propensity being
``p(j_k) / (1 - sum_{k'<k} p(j_k'))``), the items at slots 0 and k could have been the other
way round, with a probability computable from the logged propensities alone: the draw
probabilities are ``p(j_0) = prop_0``, ``p(j_k) = prop_k (1 - sum_{k'<k} p(j_k'))``, and swapping
the two items changes only the denominators of slots 1..k:

    log P(seen order) - log P(swapped) = sum_{m=1..k} log(1 - p(j_k) - D_m) - log(1 - p(j_0) - D_m),
    D_m = sum_{1 <= m' < m} p(j_m')

With ``s`` = P(seen order | the pair's items, the rest of the feed), the click at slot 0
weighted ``1 / (2 s)`` has expectation ``theta[0] (gamma_A + gamma_B) / 2``, and the click at
slot k with the same weight ``theta[k] (gamma_A + gamma_B) / 2``: the ratio of their sums over
feeds estimates ``theta[k] / theta[0]`` with no model of attractiveness at all. This is
intervention harvesting (Agarwal, Zaitsev, Wang, Li, Najork, Joachims, "Estimating Position
Bias without Intrusive Interventions", WSDM 2019) with the swap interventions of RandPair
(Wang, Golbandi, Bendersky, Metzler, Najork, WSDM 2018) found in the logging policy's own
randomness. The interval is the delta-method interval of a ratio of sums over feeds.

Debiased (inverse-propensity-weighted) metrics divide each click by the examination
probability of the position it was shown at, so a click at a rarely-examined slot counts for
more (Joachims, Swaminathan, Schnabel, "Unbiased Learning-to-Rank with Biased Feedback",
WSDM 2017). Pure numpy; inputs are aligned (n,) arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from feedrank.errors import SchemaError
from feedrank.evaluation.metrics import ndcg_at_k_weighted, weighted_auc
from feedrank.evaluation.ope_intervals import z_value


class ExaminationCurve(Protocol):
    """Anything that gives examination probabilities per 0-based position (a fitted PBM, or a
    curve harvested from randomised logs); the debiased metrics take its values."""

    theta: np.ndarray

    def examination(self, positions: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PositionBasedModel:
    """A fitted PBM. ``theta`` (K,) examination per position (theta[0] = 1); ``gamma`` (N,)
    attractiveness per item index; ``prior`` the shrinkage target for unseen items."""

    theta: np.ndarray
    gamma: np.ndarray
    prior: float
    iterations: int
    log_likelihood: float

    def examination(self, positions: np.ndarray) -> np.ndarray:
        """theta at 0-based positions (beyond the fitted range: the last one). Returns: (n,) float64."""
        pos = np.clip(np.asarray(positions, dtype=np.int64), 0, len(self.theta) - 1)
        return self.theta[pos]

    def attractiveness(self, items: np.ndarray) -> np.ndarray:
        """gamma of item indices (out of range -> the prior). Returns: (n,) float64."""
        it = np.asarray(items, dtype=np.int64)
        ok = (it >= 0) & (it < len(self.gamma))
        out = np.full(it.shape, self.prior, dtype=np.float64)
        out[ok] = self.gamma[it[ok]]
        return out


def fit_pbm(items: np.ndarray, positions: np.ndarray, clicks: np.ndarray, *, n_items: int | None = None,
            iterations: int = 50, prior_n: float = 20.0, tol: float = 1e-7) -> PositionBasedModel:
    """Fit a PBM by EM on impressions.

    Args:
        items: (n,) int item indices in [0, n_items).
        positions: (n,) int 0-based positions.
        clicks: (n,) 0/1.
        prior_n: strength of the Beta prior on gamma (pseudo-impressions at the global rate).
    """
    it = np.asarray(items, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.int64)
    c = np.asarray(clicks, dtype=np.float64)
    n = len(it)
    if n == 0 or len(pos) != n or len(c) != n:
        raise SchemaError(f"fit_pbm: items/positions/clicks must be non-empty and aligned, got {len(it)}, {len(pos)}, {len(c)}")
    if np.any(pos < 0) or np.any(it < 0):
        raise SchemaError("fit_pbm: positions and item indices must be >= 0")
    if np.any((c != 0) & (c != 1)):
        raise SchemaError("fit_pbm: clicks must be 0 or 1")
    N = int(n_items if n_items is not None else it.max() + 1)
    K = int(pos.max() + 1)
    n_pos = np.bincount(pos, minlength=K).astype(np.float64)
    n_item = np.bincount(it, minlength=N).astype(np.float64)
    ctr = float(c.mean())
    # start theta from the raw position CTRs relative to position 0 (theta = 1 is a fixed point of EM)
    pos_ctr = np.bincount(pos, weights=c, minlength=K) / np.maximum(n_pos, 1)
    theta = np.clip(0.9 * pos_ctr / max(pos_ctr[0], 1e-12), 0.01, 0.9) if pos_ctr[0] > 0 else np.full(K, 0.5)
    gamma = np.full(N, min(max(ctr / max(theta.mean(), 1e-6), 1e-6), 0.99))
    prior = max(ctr, 1e-6)
    ll_prev = -np.inf
    ll = ll_prev
    done = 0
    for done in range(1, iterations + 1):
        th, ga = theta[pos], gamma[it]
        p = np.clip(th * ga, 1e-12, 1 - 1e-12)
        ll = float(np.sum(c * np.log(p) + (1 - c) * np.log(1 - p)))
        e_post = np.where(c == 1, 1.0, th * (1 - ga) / (1 - p))
        a_post = np.where(c == 1, 1.0, (1 - th) * ga / (1 - p))
        theta = np.bincount(pos, weights=e_post, minlength=K) / np.maximum(n_pos, 1)
        prior = float(np.sum(a_post) / n)
        gamma = (np.bincount(it, weights=a_post, minlength=N) + prior_n * prior) / (n_item + prior_n)
        theta = np.clip(theta, 1e-6, 1.0)
        if abs(ll - ll_prev) < tol * max(abs(ll), 1.0):
            break
        ll_prev = ll
    # normalise: theta[0] = 1 (scale moves into gamma; product unchanged)
    s = theta[0]
    theta = theta / s
    gamma = np.clip(gamma * s, 0.0, 1.0)
    return PositionBasedModel(theta=theta, gamma=gamma, prior=float(np.clip(prior * s, 0, 1)),
                              iterations=done, log_likelihood=ll)


@dataclass(frozen=True)
class HarvestedPositionBias:
    """Examination per position harvested from a randomised log (``harvest_position_bias``):
    ``theta`` (K,) with theta[0] = 1, its two-sided interval ``lo``/``hi`` (K,) at ``level``,
    ``pairs`` (K,) the number of feeds that had each position, ``clicks`` (K,) the clicks
    that entered each ratio (slot 0 and slot k together; 0 at k = 0)."""

    theta: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    level: float
    pairs: np.ndarray
    clicks: np.ndarray

    def examination(self, positions: np.ndarray) -> np.ndarray:
        """theta at 0-based positions (beyond the estimated range: the last one). Returns: (n,) float64."""
        pos = np.clip(np.asarray(positions, dtype=np.int64), 0, len(self.theta) - 1)
        return self.theta[pos]


def feeds_from_impressions(request: np.ndarray, position: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Impressions (n,) -> dense (R, L) arrays per feed, sorted by request then position.

    Returns (length (R,), position-ordered copies of ``others`` as (R, L) arrays padded with
    0). Raises SchemaError unless each request's positions are exactly 0..L_r-1."""
    req = np.asarray(request)
    pos = np.asarray(position, dtype=np.int64)
    n = len(req)
    if n == 0 or len(pos) != n or any(len(o) != n for o in others):
        raise SchemaError(f"impressions: request/position/... must be non-empty and aligned, got lengths "
                          f"{[n, len(pos), *(len(o) for o in others)]}")
    if np.any(pos < 0):
        raise SchemaError("impressions: positions must be >= 0")
    order = np.lexsort((pos, req))
    req, pos = req[order], pos[order]
    start = np.flatnonzero(np.r_[True, req[1:] != req[:-1]])
    length = np.diff(np.r_[start, n])
    row = np.repeat(np.arange(len(start)), length)
    expect = np.arange(n) - start[row]
    if np.any(pos != expect):
        bad = req[np.flatnonzero(pos != expect)[0]]
        raise SchemaError(f"impressions: request {bad!r} does not have exactly one impression at each "
                          f"position 0..L-1 (a feed with a gap or a duplicate position)")
    L = int(length.max())
    out = []
    for o in others:
        dense = np.zeros((len(start), L), dtype=np.float64)
        dense[row, pos] = np.asarray(o, dtype=np.float64)[order]
        out.append(dense)
    return (length, *out)


def harvest_position_bias(request: np.ndarray, position: np.ndarray, propensity: np.ndarray, click: np.ndarray,
                          *, max_position: int | None = None, level: float = 0.9) -> HarvestedPositionBias:
    """Examination per position from a Plackett-Luce logging policy's own randomisation (module docstring).

    Args:
        request, position, propensity, click: (n,) every impression of the feeds (a feed's
            positions must be 0..L-1); ``propensity`` the logged sequential draw probability
            in (0, 1], ``click`` 0/1.
        max_position: estimate theta for positions 0..max_position (default: the longest feed).
    """
    length, prop, clk = feeds_from_impressions(request, position, propensity, click)
    raw_p = np.asarray(propensity, dtype=np.float64)
    raw_c = np.asarray(click, dtype=np.float64)
    if not np.all(np.isfinite(raw_p)):
        raise SchemaError(f"propensity: {int((~np.isfinite(raw_p)).sum())} non-finite value(s)")
    if np.any((raw_p <= 0) | (raw_p > 1)):
        raise SchemaError(f"propensity: {int(((raw_p <= 0) | (raw_p > 1)).sum())} value(s) outside (0, 1]")
    if np.any((raw_c != 0) & (raw_c != 1)):
        raise SchemaError("click: values must be 0 or 1")
    z = z_value(level)
    R, L = prop.shape
    K = L if max_position is None else min(int(max_position) + 1, L)
    if K < 2:
        raise SchemaError("harvest_position_bias: every feed has a single position; nothing to compare")
    valid = np.arange(L)[None, :] < length[:, None]
    # draw probabilities p(j_k) = prop_k (1 - sum of earlier draws), slot by slot
    p = np.zeros_like(prop)
    mass = np.zeros(R)
    for k in range(L):
        p[:, k] = np.where(valid[:, k], prop[:, k] * (1.0 - mass), 0.0)
        mass += p[:, k]
    D = np.cumsum(p, axis=1) - p[:, :1]  # D[:, m] = sum_{1 <= m' <= m} p, so D_m of the docstring is D[:, m-1]
    theta, lo, hi = np.ones(K), np.ones(K), np.ones(K)
    pairs, clicks = np.zeros(K, dtype=np.int64), np.zeros(K)
    pairs[0] = R
    for k in range(1, K):
        rows = length > k
        pk, p0 = p[rows, k][:, None], p[rows, 0][:, None]
        dm = D[rows, :k]  # D_m for m = 1..k
        a_ob = 1.0 - p0 - dm
        if np.any(a_ob <= 1e-12):
            raise SchemaError(f"propensity: {int(np.any(a_ob <= 1e-12, axis=1).sum())} feed(s) could not have had "
                              f"slots 0 and {k} the other way round (a deterministic order, e.g. propensity 1 at "
                              "the top): these are not Plackett-Luce draw propensities, positions were not randomised")
        a_sw = np.clip(1.0 - pk - dm, 1e-300, None)
        log_ratio = np.sum(np.log(a_sw) - np.log(a_ob), axis=1)  # log P(seen) - log P(swapped)
        s_seen = 1.0 / (1.0 + np.exp(-log_ratio))
        wgt = 0.5 / np.maximum(s_seen, 1e-300)
        x, y = clk[rows, k] * wgt, clk[rows, 0] * wgt
        sy = float(y.sum())
        pairs[k] = int(rows.sum())
        clicks[k] = float(clk[rows, k].sum() + clk[rows, 0].sum())
        if sy <= 0:
            raise SchemaError(f"harvest_position_bias: no click at position 0 among feeds with a position {k}")
        t = float(x.sum()) / sy
        se = float(np.sqrt(np.sum((x - t * y) ** 2) * len(x) / max(len(x) - 1, 1))) / sy
        theta[k], lo[k], hi[k] = t, max(t - z * se, 0.0), t + z * se
    return HarvestedPositionBias(theta=theta, lo=lo, hi=hi, level=level, pairs=pairs, clicks=clicks)


EXAMINATION_METHODS = ("em", "harvest")


def fit_examination(method: str, items: np.ndarray, positions: np.ndarray, clicks: np.ndarray, *,
                    requests: np.ndarray | None = None, propensities: np.ndarray | None = None,
                    n_items: int | None = None, max_position: int | None = None) -> ExaminationCurve:
    """An examination curve for the debiased metrics, by ``method``: ``"em"`` (``fit_pbm``;
    needs items, positions, clicks) or ``"harvest"`` (``harvest_position_bias``; needs
    ``requests`` and ``propensities`` too, from a Plackett-Luce logging policy). Inputs (n,)."""
    if method == "em":
        return fit_pbm(items, positions, clicks, n_items=n_items)
    if method == "harvest":
        if requests is None or propensities is None:
            raise SchemaError("fit_examination: method 'harvest' needs requests and propensities")
        return harvest_position_bias(requests, positions, propensities, clicks, max_position=max_position)
    raise SchemaError(f"fit_examination: method must be one of {', '.join(EXAMINATION_METHODS)}, got {method!r}")


@dataclass(frozen=True)
class ExaminationChoice:
    """The examination curve a log supports (``examination_for_log``): ``method`` is
    ``"harvest"`` or ``"em"``, ``reason`` says why (for the report), ``curve`` gives the values."""

    curve: ExaminationCurve
    method: str
    reason: str

    @property
    def kind(self) -> str:
        return "harvested from the log's randomisation" if self.method == "harvest" else "position-based (EM)"


def complete_feeds(request: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(n,) bool: impressions of feeds whose positions are exactly 0..L-1 (a feed cut by a time
    split, or with a gap or a duplicate, is left out)."""
    req = np.asarray(request)
    pos = np.asarray(position, dtype=np.int64)
    if len(req) == 0:
        return np.zeros(0, dtype=bool)
    _, codes = np.unique(req, return_inverse=True)
    n_feeds = int(codes.max()) + 1
    count = np.bincount(codes, minlength=n_feeds)
    top = np.full(n_feeds, -1, dtype=np.int64)
    np.maximum.at(top, codes, pos)
    span = int(pos.max(initial=0)) + 2  # keys (feed, position + 1), position >= -1
    distinct = np.bincount(np.unique(codes.astype(np.int64) * span + (np.maximum(pos, -1) + 1)) // span,
                           minlength=n_feeds)
    negative = np.bincount(codes, weights=(pos < 0).astype(np.float64), minlength=n_feeds) > 0
    ok = (count == top + 1) & (distinct == count) & ~negative  # L distinct positions, the largest L-1: 0..L-1
    return ok[codes]


def examination_for_log(items: np.ndarray, positions: np.ndarray, clicks: np.ndarray, *,
                        requests: np.ndarray | None = None, propensities: np.ndarray | None = None,
                        n_items: int | None = None, level: float = 0.9) -> ExaminationChoice:
    """The harvested curve (``harvest_position_bias``) when the log's feeds were randomised
    (every impression of the complete feeds has a request and a Plackett-Luce draw
    propensity, and slot 0 could have held any of the feed's items), else the EM fit
    (``fit_pbm``), with the reason. Inputs (n,); ``propensities`` NaN where not logged."""
    pos = np.asarray(positions, dtype=np.int64)
    c = np.asarray(clicks, dtype=np.float64)

    def em(reason: str) -> ExaminationChoice:
        return ExaminationChoice(fit_pbm(items, pos, c, n_items=n_items), "em", reason)

    if requests is None or propensities is None:
        return em("no request ids or propensities given")
    req = np.asarray(requests)
    prop = np.asarray(propensities, dtype=np.float64)
    if req.shape != pos.shape or prop.shape != pos.shape:
        raise SchemaError(f"examination_for_log: requests {req.shape} and propensities {prop.shape} must be like "
                          f"positions {pos.shape}")
    full = complete_feeds(req, pos)
    if not full.any():
        return em("no complete feed (positions 0..L-1 with one request id)")
    logged = np.isfinite(prop[full]) & (prop[full] > 0) & (prop[full] <= 1)
    if not logged.all():
        return em(f"{int((~logged).sum())} of {int(full.sum())} impressions have no propensity in (0, 1]")
    try:
        h = harvest_position_bias(req[full], pos[full], prop[full], c[full], level=level)
    except SchemaError as e:
        return em(f"the log's order cannot be harvested: {e.args[0] if e.args else e}")
    if np.any(h.theta <= 0):
        k = int(np.flatnonzero(h.theta <= 0)[0])
        return em(f"the harvested examination is 0 at position {k} (no click there)")
    theta = np.minimum(h.theta, 1.0)  # a noisy deep slot above slot 0: examination is at most 1
    curve = HarvestedPositionBias(theta=theta, lo=h.lo, hi=h.hi, level=h.level, pairs=h.pairs, clicks=h.clicks)
    return ExaminationChoice(curve, "harvest", f"randomised feeds: {int(h.pairs[0])} complete feeds harvested")


def debiased_auc(clicks: np.ndarray, scores: np.ndarray, examination: np.ndarray) -> float:
    """AUC of ``scores`` against clicks with each click weighted 1 / examination of its slot.

    Clicks at rarely-examined positions count for more, as they would if every slot were
    examined. Inputs (n,); examination in (0, 1]."""
    e = _exam(examination, len(clicks))
    c = np.asarray(clicks, dtype=np.float64)
    return weighted_auc(c, scores, np.where(c > 0, 1.0 / e, 1.0))


def debiased_ndcg(clicks: np.ndarray, scores: np.ndarray, groups: np.ndarray, examination: np.ndarray, k: int = 10) -> float:
    """nDCG@k per group with IPW gains click / examination, averaged over groups with a click."""
    e = _exam(examination, len(clicks))
    gains = np.asarray(clicks, dtype=np.float64) / e
    return ndcg_at_k_weighted(gains, scores, groups, k)


def _exam(examination: np.ndarray, n: int) -> np.ndarray:
    e = np.asarray(examination, dtype=np.float64)
    if e.shape != (n,):
        raise SchemaError(f"examination: expected shape ({n},), got {e.shape}")
    if np.any(e <= 0) or np.any(e > 1 + 1e-9):
        raise SchemaError("examination: values must be in (0, 1]")
    return e
