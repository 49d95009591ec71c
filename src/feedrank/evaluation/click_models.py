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

Debiased (inverse-propensity-weighted) metrics divide each click by the examination
probability of the position it was shown at, so a click at a rarely-examined slot counts for
more (Joachims, Swaminathan, Schnabel, "Unbiased Learning-to-Rank with Biased Feedback",
WSDM 2017). Pure numpy; inputs are aligned (n,) arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feedrank.errors import SchemaError
from feedrank.evaluation.metrics import ndcg_at_k_weighted, weighted_auc


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
