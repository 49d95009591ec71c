"""Exposure disparity between creator groups: the measure the fairness regulariser targets.

Pure numpy. A ranked impression gives the item at 1-based rank r the exposure
``1 / log2(r + 1)`` (the DCG position weight). Disparity compares the mean exposure per
shown item of a protected group (e.g. new creators) with everyone else's:

    disparity = |mean_exposure(others) - mean_exposure(protected)| / mean_exposure(all)

0 means both groups get the same exposure per item; the regulariser in ``losses.py``
(``exposure_gap``) is its differentiable stand-in during training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def rank_in_group(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N,) 0-based rank of each row inside its group, best score first (ties: input order)."""
    codes = pd.factorize(pd.Series(groups), sort=False)[0]
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64), codes))
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - run_start
    return rank


def exposure_disparity(scores: np.ndarray, groups: np.ndarray, protected: np.ndarray) -> dict[str, float]:
    """Exposure per group when every impression (``groups`` (N,)) is ordered by ``scores`` (N,).

    Returns ``disparity`` (see module docstring), ``exposure_protected``, ``exposure_others``
    and ``share_protected`` (the protected group's share of all rows); nan when one group is absent."""
    p = np.asarray(protected, dtype=bool)
    if len(p) == 0 or p.all() or not p.any():
        return {"disparity": float("nan"), "exposure_protected": float("nan"), "exposure_others": float("nan"),
                "share_protected": float(p.mean()) if len(p) else float("nan")}
    exp = 1.0 / np.log2(rank_in_group(scores, groups) + 2.0)
    e_p, e_o = float(exp[p].mean()), float(exp[~p].mean())
    return {"disparity": abs(e_o - e_p) / float(exp.mean()), "exposure_protected": e_p, "exposure_others": e_o,
            "share_protected": float(p.mean())}
