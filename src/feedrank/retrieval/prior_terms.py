"""Pieces of the retrieval prior (``retrieval/prior.py``): the terms for items new to the
towers (``NewItemTerms``), the estimator of the user's category preference read by the
category term (``CategoryShare``, ``search_category_share``) and the maximum-likelihood solver
of every prior weight (``fit_prior_weights``: projected, damped Newton on the convex softmax
likelihood). Pure numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewItemTerms:
    """Terms of the score for items the towers never trained on (published at or after
    ``new_from``: their vectors come from content and metadata only, and their clicks so far
    are exposure by the logging policy's exploration rather than by popularity). Each weight
    is added to the matching one of ``AgePrior`` for those items only, any sign:

        + new_i * (intercept - age_weight * age_days + pop_weight * log1p(clicks) + tower_weight * u.v/T)

    Fitted on a held-out tail whose items published in it are new to the towers that score
    it (``fit_age_prior(new_items=True)``); served with ``new_from`` = the served towers' cut."""

    new_from: float              # items published at or after this time are new to the towers
    intercept: float = 0.0       # in units of the logit
    age_weight: float = 0.0      # per day of age, added to w_age
    pop_weight: float = 0.0      # per log click, added to w_pop
    tower_weight: float = 0.0    # added to the tower logit's weight

    @property
    def active(self) -> bool:
        return any(w != 0.0 for w in (self.intercept, self.age_weight, self.pop_weight, self.tower_weight))

    def is_new(self, published_at: np.ndarray) -> np.ndarray:
        """(N,) float64 1 for items published at or after ``new_from`` (unknown: 0)."""
        return (np.nan_to_num(np.asarray(published_at, dtype=np.float64), nan=-np.inf) >= self.new_from).astype(np.float64)

    def bias(self, published_at: np.ndarray, age_days: np.ndarray, log_clicks: np.ndarray | None) -> np.ndarray:
        """(N,) the additive terms (0 for items not new); ``log_clicks`` None: no popularity term."""
        out = self.intercept - self.age_weight * age_days
        if log_clicks is not None and self.pop_weight:
            out = out + self.pop_weight * log_clicks
        return self.is_new(published_at) * out

    def to_json(self) -> dict:
        return {"new_from": self.new_from, "intercept": self.intercept, "age_weight": self.age_weight,
                "pop_weight": self.pop_weight, "tower_weight": self.tower_weight}

    @classmethod
    def from_json(cls, raw: dict) -> NewItemTerms:
        return cls(float(raw["new_from"]), float(raw.get("intercept", 0.0)), float(raw.get("age_weight", 0.0)),
                   float(raw.get("pop_weight", 0.0)), float(raw.get("tower_weight", 0.0)))


# Ladders the search walks, outward from 1 (the towers' share), one step at a time while the
# held-out loss falls: recency decays downwards from 1, smoothing strengths upwards from 1 (then
# downwards when 2 does not help). Only the steps up to the first rise are fitted. Wider ladders
# (decays 0.95 .. 0.3, strengths 0.25 .. 16) were measured (docs/retrieval.md, "Category preference
# estimate"): on the demo world the loss rises past 0.85 and 4 on each side, on MovieLens it keeps
# falling to 0.3 / 16 without a served-recall gain; so these.
CATEGORY_DECAYS = (0.85, 0.7, 0.5)
CATEGORY_STRENGTHS = (0.5, 2.0, 4.0)
CATEGORY_NLL_TOL = 1e-7  # nll changes below this are the refit's rounding: a flat stretch, no gain


@dataclass(frozen=True)
class CategoryShare:
    """How the category term estimates a user's category preference from the history rows
    (``features/history.category_share``)::

        a[c] = (sum_k decay**r_k [cat_k = c] + strength * pi[c]) / (sum_k decay**r_k + strength)

    ``r_k``: 0 for the newest click, 1 for the one before...; ``population`` = ``pi``, the
    categories' share of the training clicks (None: uniform 1/C). A prior without one (old
    bundles) uses strength 1, decay 1, uniform: the towers' ``category_affinity``."""

    strength: float = 1.0
    decay: float = 1.0
    population: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (self.strength > 0 and np.isfinite(self.strength)):
            raise ValueError(f"CategoryShare: strength must be > 0, got {self.strength}")
        if not 0 < self.decay <= 1:
            raise ValueError(f"CategoryShare: decay must be in (0, 1], got {self.decay}")
        if self.population is not None:
            pi = np.asarray(self.population, dtype=np.float64)
            if pi.ndim != 1 or not len(pi) or not (pi > 0).all() or abs(pi.sum() - 1.0) > 1e-6:
                raise ValueError("CategoryShare: population must be category shares > 0 summing to 1")

    def one(self, history: np.ndarray, item_cat: np.ndarray, n_cats: int) -> np.ndarray:
        """(n_cats,) ``shares`` of one history (L,) (serving's per-request call), bitwise the
        same row at a fraction of the cost: the smoothing shares and the decay's powers are
        made once per estimator and length."""
        from feedrank.features.history import category_share_one

        cache = self.__dict__.setdefault("_one_cache", {})  # not a field: equality and JSON ignore it
        h = np.asarray(history, dtype=np.int64)
        key = (n_cats, len(h))
        got = cache.get(key)
        if got is None:
            powers = float(self.decay) ** np.arange(len(h) - 1, -1, -1, dtype=np.float64)
            got = cache[key] = (self._prior_shares(n_cats), powers)
        return category_share_one(h, item_cat, got[0], self.strength, got[1])

    def _prior_shares(self, n_cats: int) -> np.ndarray:
        """(n_cats,) the shares the estimate is smoothed towards: ``population``, or uniform."""
        if self.population is None:
            return np.full(n_cats, 1.0 / n_cats)
        if len(self.population) != n_cats:
            raise ValueError(f"CategoryShare: population has {len(self.population)} categories, expected {n_cats}")
        return np.asarray(self.population, dtype=np.float64)

    def shares(self, histories: np.ndarray, item_cat: np.ndarray, n_cats: int) -> np.ndarray:
        """(Q, n_cats) float64 preferences of ``histories`` (Q, L) item rows (-1 padded left)."""
        from feedrank.features.history import category_share

        return category_share(histories, item_cat, n_cats, self.strength, self.decay, self._prior_shares(n_cats))

    def to_json(self) -> dict:
        return {"strength": self.strength, "decay": self.decay,
                "population": None if self.population is None else [float(v) for v in self.population]}

    @classmethod
    def from_json(cls, raw: dict) -> CategoryShare:
        pop = raw.get("population")
        return cls(float(raw.get("strength", 1.0)), float(raw.get("decay", 1.0)),
                   None if pop is None else tuple(float(v) for v in pop))


def category_share_fields(raw: dict | None) -> dict:
    """``AgePrior`` keyword arguments from the manifest's ``age_prior.category_share`` JSON
    (absent: none, i.e. the defaults: an older bundle keeps ``category_affinity``'s share)."""
    if not raw:
        return {}
    return {"category_estimator": CategoryShare.from_json(raw), "category_search": raw.get("search")}


@dataclass(frozen=True)
class CategoryShareFit:
    """The estimator ``search_category_share`` picked, the prior fit's negative log-likelihood
    per click with it (``nll``) and with the towers' share (``nll_uniform``: strength 1, decay
    1, uniform), and every candidate tried as (``CategoryShare.to_json()``, nll)."""

    share: CategoryShare
    nll: float
    nll_uniform: float
    tried: tuple[tuple[dict, float | None], ...]  # None: the fit failed (non-finite nll) for that one

    def to_json(self) -> dict:
        """JSON-native (what the manifest's ``age_prior.category_share.search`` holds)."""
        return {"nll": round(self.nll, 6), "nll_uniform": round(self.nll_uniform, 6),
                "tried": [[share, nll] for share, nll in self.tried]}


def search_category_share(nll_of: Callable[[CategoryShare], float], population: np.ndarray,
                          decays: tuple[float, ...] = CATEGORY_DECAYS,
                          strengths: tuple[float, ...] = CATEGORY_STRENGTHS) -> CategoryShareFit:
    """Pick the ``CategoryShare`` by the prior fit's own likelihood: ``nll_of(share)`` is the
    negative log-likelihood per click of the retrieval softmax with every weight refitted for
    that share (what the category term is for; the likelihood of the clicked *category* alone
    favours a population prior that the item softmax penalises: more items already carry a
    popular category). Coordinate search from the towers' share (strength 1, decay 1,
    uniform): the recency ``decays`` walked down from 1, then the ``strengths`` at the best
    decay walked up from 1 (down when no step up helps), each walk stopping at the first
    candidate whose nll rises above the lowest before it (the loss is taken to be unimodal along
    a ladder: an ordered search costs the steps to the optimum plus one, not the whole grid), then
    the ``population`` prior (the categories' click shares, > 0, summing to 1) at the best of
    those. A candidate replaces the best only with an nll lower by more than ``CATEGORY_NLL_TOL``
    (ties, up to the refit's rounding, keep the simpler one)."""
    for name, ladder, ok in (("decays", decays, lambda v: 0 < v < 1), ("strengths", strengths,
                                                                       lambda v: 0 < v != 1 and np.isfinite(v))):
        if len(set(ladder)) != len(ladder) or not all(ok(float(v)) for v in ladder):
            raise ValueError(f"search_category_share: {name} must be distinct values "
                             f"{'in (0, 1)' if name == 'decays' else '> 0 other than 1'}, got {ladder}")
    pop = tuple(float(v) for v in np.asarray(population, dtype=np.float64))
    tried: list[tuple[dict, float | None]] = []

    def run(share: CategoryShare) -> float:
        nll = float(nll_of(share))
        if not np.isfinite(nll):
            if not tried:  # the towers' own share: without it there is no fit to compare with
                raise ValueError(f"search_category_share: the fit's nll is {nll} for {share.to_json()}")
            log.warning("category share search: the fit's nll is %s for %s; that candidate is skipped",
                        nll, share.to_json())
            tried.append((share.to_json(), None))
            return np.inf  # never picked; a walk stops at it
        tried.append((share.to_json(), round(nll, 6)))
        return nll

    best = CategoryShare()
    best_nll = nll_uniform = run(best)

    def walk(steps: list[CategoryShare]) -> bool:
        """Try ``steps`` in order until the nll rises above the lowest before it (a flat stretch,
        e.g. a category weight held at its bound, is walked through); True when one lowered it."""
        nonlocal best, best_nll
        prev, start = best_nll, best_nll
        for cand in steps:
            nll = run(cand)
            if nll < best_nll - CATEGORY_NLL_TOL:
                best, best_nll = cand, nll
            if nll > prev + CATEGORY_NLL_TOL:
                break
            prev = min(prev, nll)
        return best_nll < start

    walk([CategoryShare(1.0, d) for d in sorted(decays, reverse=True)])                        # recency
    if not walk([CategoryShare(st, best.decay) for st in sorted(v for v in strengths if v > 1)]):  # smoothing
        walk([CategoryShare(st, best.decay) for st in sorted((v for v in strengths if v < 1), reverse=True)])
    walk([CategoryShare(best.strength, best.decay, pop)])                                       # population prior
    return CategoryShareFit(best, best_nll, nll_uniform, tuple(tried))


def fit_prior_weights(base: np.ndarray, feats: list[np.ndarray], live: np.ndarray, positives: np.ndarray,
                      iters: int = 25, chunk: int = 512, lower: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """Maximum-likelihood ``w >= lower`` (F,) of ``softmax_j(base_qj + sum_f w_f feats[f]_qj)`` over
    ``live`` (Q, N) bool candidates, target ``positives`` (Q,) column per row.

    base (Q, N) float32 tower logits; feats F arrays (Q, N) float32; ``lower`` (F,) bounds
    (None: all 0; -inf: a weight of any sign). Convex: projected, damped Newton. Returns
    (w (F,), nll at w = 0, nll at w), per row."""
    q, f = len(positives), len(feats)
    lower = np.zeros(f) if lower is None else np.asarray(lower, dtype=np.float64)
    if lower.shape != (f,) or np.any(lower > 0):
        raise ValueError(f"fit_prior_weights: lower must be {f} bounds <= 0, got {lower.tolist()}")
    rows = np.arange(q)
    live = live.copy()
    live[rows, positives] = True
    # per chunk of rows, only the columns live for one of its rows: the others carry p = 0 (they add
    # nothing to the nll, gradient or Hessian), and every Newton step skips them
    chunks = []
    for s in range(0, q, chunk):
        sl = slice(s, s + chunk)
        cols: np.ndarray | slice = np.flatnonzero(live[sl].any(axis=0))
        pos = np.searchsorted(cols, positives[sl])
        if len(cols) == live.shape[1]:
            cols = slice(None)
        chunks.append((sl, cols, live[sl][:, cols], pos))

    def stats(w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        nll, grad, hess = 0.0, np.zeros(f), np.zeros((f, f))
        for sl, cols, lv, pos in chunks:
            r = np.arange(len(pos))
            z = base[sl][:, cols].astype(np.float64)
            for k in range(f):
                z = z + w[k] * feats[k][sl][:, cols]
            z = np.where(lv, z, -np.inf)
            m = z.max(axis=1, keepdims=True)
            p = np.exp(z - m)
            tot = p.sum(axis=1, keepdims=True)
            p /= tot
            x = np.stack([np.where(lv, feats[k][sl][:, cols], 0.0) for k in range(f)], axis=-1)  # (c, N', F)
            px = p[:, :, None] * x
            ex = px.sum(1)                                                        # (c, F)
            nll += float((np.log(tot[:, 0]) + m[:, 0] - z[r, pos]).sum())
            grad += (ex - x[r, pos]).sum(0)
            hess += px.reshape(-1, f).T @ x.reshape(-1, f) - ex.T @ ex  # sum over rows of Cov_p(x)
        return nll / q, grad / q, hess / q

    w = np.zeros(f)
    nll0, g, h = stats(w)
    nll = nll0
    for _ in range(iters):
        # active set: a weight at its bound whose gradient pushes it below stays there; Newton on the rest
        free = ~((w <= lower) & (g > 0.0))
        if not free.any():
            break
        step = np.zeros(f)
        try:
            step[free] = np.linalg.solve(h[np.ix_(free, free)] + 1e-12 * np.eye(int(free.sum())), g[free])
        except np.linalg.LinAlgError:
            break
        for _ in range(30):
            cand = np.maximum(w - step, lower)
            nll_c, g_c, h_c = stats(cand)
            if nll_c <= nll + 1e-12:
                break
            step /= 2
        else:
            break
        done = float(np.abs(cand - w).max()) < 1e-6
        w, nll, g, h = cand, nll_c, g_c, h_c
        if done:
            break
    return w, float(nll0), float(nll)
