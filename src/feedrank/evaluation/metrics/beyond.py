"""Debiased and beyond-accuracy metrics: ``weighted_auc``, ``ndcg_at_k_weighted``,
``calibration_curve``, ``gini``, ``lorenz_curve``, ``intra_list_diversity``, ``novelty``
(conventions: the package docstring, ``feedrank.evaluation.metrics``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from feedrank.errors import SchemaError
from feedrank.evaluation.metrics._inputs import _discounts, _groups, _k, _labels, _scores


def weighted_auc(labels: Any, scores: Any, weights: Any) -> float:
    """AUC where each row counts with a weight: sum over (pos i, neg j) of w_i w_j [s_i > s_j]
    (ties 1/2), over sum w_i * sum w_j. Used for position-debiased AUC (clicks weighted
    1 / examination). Args (N,) each; weights >= 0. ``nan`` when a class has no weight."""
    y = _labels(labels)
    s = _scores(scores, len(y))
    w = _scores(weights, len(y), name="weights")
    if (w < 0).any():
        raise SchemaError("weights: must be >= 0")
    order = np.argsort(s, kind="stable")
    ss, ys, ws = s[order], y[order], w[order]
    wn = ws * (1.0 - ys)
    wp = ws * ys
    # group equal scores into runs: a positive beats the negative weight strictly below, ties 1/2
    new_run = np.ones(len(ss), dtype=bool)
    new_run[1:] = ss[1:] != ss[:-1]
    run = np.cumsum(new_run) - 1
    neg_run = np.bincount(run, weights=wn)
    pos_run = np.bincount(run, weights=wp)
    below = np.cumsum(neg_run) - neg_run
    tot_p, tot_n = float(wp.sum()), float(wn.sum())
    if tot_p <= 0 or tot_n <= 0:
        return float("nan")
    return float(np.sum(pos_run * (below + 0.5 * neg_run)) / (tot_p * tot_n))


def ndcg_at_k_weighted(gains: Any, scores: Any, groups: Any, k: int) -> float:
    """nDCG@k with real-valued gains >= 0 (e.g. click / examination), per group, averaged
    over groups with a positive gain. Args (N,) each. Ties in score keep input order."""
    g = _scores(gains, len(np.asarray(gains)), name="gains")
    if len(g) == 0:
        raise SchemaError("gains: empty input (need at least one row)")
    if (g < 0).any():
        raise SchemaError("gains: must be >= 0")
    s = _scores(scores, len(g))
    k = _k(k)
    codes, G = _groups(groups, len(g))
    disc = _discounts(k)
    order = np.lexsort((-s, codes))
    cs, gs = codes[order], g[order]
    size = np.bincount(cs, minlength=G)
    start = np.concatenate(([0], np.cumsum(size)[:-1]))
    pos = np.arange(len(cs)) - start[cs]
    top = pos < k
    dcg = np.bincount(cs[top], weights=gs[top] * disc[pos[top]], minlength=G)
    iorder = np.lexsort((-gs, cs))
    igs = gs[iorder]
    itop = top  # same group layout: positions are identical after re-sorting within groups
    idcg = np.bincount(cs[itop], weights=igs[itop] * disc[pos[itop]], minlength=G)
    ok = idcg > 0
    return float(np.mean(dcg[ok] / idcg[ok])) if ok.any() else float("nan")


def calibration_curve(labels: Any, probs: Any, n_bins: int = 10, *, quantile: bool = True) -> dict[str, list[float]]:
    """Reliability diagram data: per non-empty bin, mean predicted probability, observed rate
    and count. Bins hold equal counts (``quantile``, readable when most probabilities are
    small, as click rates are) or equal widths on [0, 1]. Returns lists ``pred``, ``obs``,
    ``count`` (same length)."""
    y = _labels(labels)
    p = _scores(probs, len(y), name="probs")
    if (p < 0).any() or (p > 1).any():
        raise SchemaError("probs: probabilities must lie in [0, 1]")
    if quantile:
        edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1]))
        b = np.searchsorted(edges, p, side="right")
    else:
        b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins)
    sp = np.bincount(b, weights=p, minlength=n_bins)
    sy = np.bincount(b, weights=y, minlength=n_bins)
    ok = cnt > 0
    return {"pred": (sp[ok] / cnt[ok]).tolist(), "obs": (sy[ok] / cnt[ok]).tolist(), "count": cnt[ok].astype(int).tolist()}


def gini(values: Any) -> float:
    """Gini coefficient of non-negative amounts (e.g. impressions per creator, zeros
    included): 0 = perfectly equal, -> 1 = one holder has everything. ``nan`` if all zero."""
    v = np.sort(_scores(values, len(np.asarray(values)), name="values"))
    if len(v) == 0:
        raise SchemaError("values: empty input")
    if (v < 0).any():
        raise SchemaError("values: must be >= 0")
    tot = v.sum()
    if tot <= 0:
        return float("nan")
    n = len(v)
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * v) / (n * tot))


def lorenz_curve(values: Any, points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of amounts: (x, y), each (points,): x = share of holders (poorest first),
    y = their share of the total."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if len(v) == 0 or v.sum() <= 0:
        raise SchemaError("values: need at least one positive amount")
    cum = np.concatenate(([0.0], np.cumsum(v))) / v.sum()
    x = np.linspace(0.0, 1.0, points)
    return x, np.interp(x * len(v), np.arange(len(v) + 1), cum)


def intra_list_diversity(list_ids: Any, categories: Any) -> float:
    """Mean over lists of the share of item pairs in a list with different categories
    (1 - sum_c n_c (n_c - 1) / (n (n - 1))). Args (N,) each: the list each row belongs to
    and its item's category. Lists of one item are skipped; ``nan`` when none has two."""
    lc, L = _groups(list_ids, len(np.asarray(list_ids)))
    cc, C = _groups(categories, len(lc))
    n = np.bincount(lc, minlength=L).astype(np.float64)
    pair = np.bincount(lc * C + cc, minlength=L * C).astype(np.float64)
    same = np.bincount(np.repeat(np.arange(L), C), weights=pair * (pair - 1), minlength=L)
    ok = n > 1
    if not ok.any():
        return float("nan")
    return float(np.mean(1.0 - same[ok] / (n[ok] * (n[ok] - 1))))


def novelty(item_popularity: Any, n_users: int) -> float:
    """Mean self-information -log2(p_i) of the recommended items, p_i = share of users who
    interacted with item i in training (clipped at 1 / n_users). Args: (N,) counts of users
    for each recommended row. Higher = less popular items."""
    c = _scores(item_popularity, len(np.asarray(item_popularity)), name="item_popularity")
    if len(c) == 0:
        raise SchemaError("item_popularity: empty input")
    if n_users < 1:
        raise SchemaError(f"n_users: expected >= 1, got {n_users}")
    p = np.clip(c / n_users, 1.0 / n_users, 1.0)
    return float(np.mean(-np.log2(p)))
