"""Pieces of the retrieval prior (``retrieval/prior.py``): the terms for items new to the
towers (``NewItemTerms``) and the maximum-likelihood solver of every prior weight
(``fit_prior_weights``: projected, damped Newton on the convex softmax likelihood). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    def stats(w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        nll, grad, hess = 0.0, np.zeros(f), np.zeros((f, f))
        for s in range(0, q, chunk):
            sl = slice(s, s + chunk)
            r = rows[sl] - s
            z = base[sl].astype(np.float64)
            for k in range(f):
                z = z + w[k] * feats[k][sl]
            z = np.where(live[sl], z, -np.inf)
            m = z.max(axis=1, keepdims=True)
            p = np.exp(z - m)
            tot = p.sum(axis=1, keepdims=True)
            p /= tot
            x = np.stack([np.where(live[sl], feats[k][sl], 0.0) for k in range(f)], axis=-1)  # (c, N, F)
            px = p[:, :, None] * x
            ex = px.sum(1)                                                        # (c, F)
            nll += float((np.log(tot[:, 0]) + m[:, 0] - z[r, positives[sl]]).sum())
            grad += (ex - x[r, positives[sl]]).sum(0)
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
