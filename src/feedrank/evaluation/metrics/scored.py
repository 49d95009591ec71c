"""Scored rows and impressions: ``auc``, ``gauc``, ``mrr``, ``ndcg_at_k``, the MIND-style
bundle ``impression_metrics`` and ``expected_calibration_error`` (conventions: the package
docstring, ``feedrank.evaluation.metrics``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from feedrank.errors import SchemaError
from feedrank.evaluation.metrics._inputs import _discounts, _groups, _k, _labels, _scores


# --------------------------------------------------------------------------- grouped core


class _Ranked:
    """Rows sorted once by group, then score descending (stable: ties keep input order).

    Attributes (all in sorted order unless noted): ``cs`` (N,) group codes, ``ss`` (N,)
    scores, ``ys`` (N,) labels, ``pos`` (N,) 0-based rank inside the group; per group (G,):
    ``size`` rows, ``n_pos`` positives, ``start`` first sorted row.
    """

    __slots__ = ("n_groups", "cs", "ss", "ys", "pos", "size", "n_pos", "start")

    def __init__(self, y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_groups: int) -> None:
        order = np.argsort(-s, kind="stable") if n_groups == 1 else np.lexsort((-s, codes))
        self.n_groups = n_groups
        self.cs = codes[order]
        self.ss = s[order]
        self.ys = y[order]
        self.size = np.bincount(self.cs, minlength=n_groups)
        self.start = np.concatenate(([0], np.cumsum(self.size)[:-1]))
        self.pos = np.arange(len(self.cs)) - self.start[self.cs]
        self.n_pos = np.bincount(self.cs, weights=self.ys, minlength=n_groups)


def _prepare(labels: Any, scores: Any, groups: Any | None) -> _Ranked:
    y = _labels(labels)
    s = _scores(scores, len(y))
    if groups is None:
        return _Ranked(y, s, np.zeros(len(y), dtype=np.int64), 1)
    codes, g = _groups(groups, len(y))
    return _Ranked(y, s, codes, g)


def _group_auc(r: _Ranked) -> tuple[np.ndarray, np.ndarray]:
    """Per-group AUC via tie-averaged ranks (Mann-Whitney U).

    Returns ``(auc_g, valid_g)``, each (G,): AUC (nan where undefined) and whether the
    group has both classes.
    """
    n = len(r.cs)
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (r.cs[1:] != r.cs[:-1]) | (r.ss[1:] != r.ss[:-1])
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)  # exclusive
    run_id = np.cumsum(new_run) - 1
    # descending position p (0-based) has ascending rank size - p (1-based); average over ties
    avg_pos = (run_start + run_end - 1) / 2.0
    rank = r.size[r.cs] - (avg_pos[run_id] - r.start[r.cs])
    rank_sum = np.bincount(r.cs, weights=rank * r.ys, minlength=r.n_groups)
    n_pos = r.n_pos
    n_neg = r.size - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    out = np.full(r.n_groups, np.nan)
    u = rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1.0) / 2.0
    out[valid] = u / (n_pos[valid] * n_neg[valid])
    return out, valid


def _weighted_gauc(per_auc: np.ndarray, valid: np.ndarray, size: np.ndarray) -> float:
    if not valid.any():
        return float("nan")
    w = size[valid].astype(np.float64)
    return float(np.sum(per_auc[valid] * w) / np.sum(w))


def _group_mrr(r: _Ranked, first_only: bool) -> np.ndarray:
    """(G,) per-group MRR (nan where the group has no positive)."""
    out = np.full(r.n_groups, np.nan)
    has = r.n_pos > 0
    if first_only:
        hit = np.flatnonzero(r.ys > 0)
        g_first, idx = np.unique(r.cs[hit], return_index=True)  # rows are in rank order
        out[g_first] = 1.0 / (r.pos[hit[idx]] + 1.0)
    else:
        rr = np.bincount(r.cs, weights=r.ys / (r.pos + 1.0), minlength=r.n_groups)
        out[has] = rr[has] / r.n_pos[has]
    return out


def _group_ndcg(r: _Ranked, k: int) -> np.ndarray:
    """(G,) per-group binary-gain nDCG@k (nan where the group has no positive)."""
    disc = _discounts(k)
    top = r.pos < k
    dcg = np.bincount(r.cs[top], weights=r.ys[top] * disc[r.pos[top]], minlength=r.n_groups)
    out = np.full(r.n_groups, np.nan)
    has = r.n_pos > 0
    ideal = np.cumsum(disc)[np.minimum(r.n_pos[has], k).astype(np.int64) - 1]
    out[has] = dcg[has] / ideal
    return out


def _nanmean(x: np.ndarray) -> float:
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


# --------------------------------------------------------------------------- AUC family


def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve.

    Args:
        labels: (N,) bool or 0/1.
        scores: (N,) float; higher = more likely positive. NaN raises ``SchemaError``.

    Returns:
        P(score of a random positive > score of a random negative), ties counting 1/2;
        computed from tie-averaged ranks in O(N log N). ``nan`` when only one class is present.
    """
    out, _ = _group_auc(_prepare(labels, scores, None))
    return float(out[0])


def gauc(labels: Any, scores: Any, groups: Any) -> float:
    """Group AUC: per-group AUC averaged with weights = the group's number of rows.

    ``GAUC = sum_g n_g * AUC_g / sum_g n_g`` over the groups g that contain both a positive
    and a negative (others have no AUC and are left out, weights included). Group by user
    id for the classic (Zhou et al., DIN) user-level GAUC, or by request id for impressions.

    Args:
        labels: (N,) bool or 0/1.  scores: (N,) float.  groups: (N,) any hashable ids.

    Returns:
        float in [0, 1]; ``nan`` when no group has both classes.
    """
    r = _prepare(labels, scores, groups)
    per, valid = _group_auc(r)
    return _weighted_gauc(per, valid, r.size)


# --------------------------------------------------------------------------- impressions


def mrr(labels: Any, scores: Any, groups: Any, *, first_only: bool = False) -> float:
    """Mean reciprocal rank over impressions (groups) that have at least one positive.

    Per group, rows are ranked by score (descending; ties by input order). With the default
    ``first_only=False`` this is MIND's definition, the mean of ``1/rank`` over the group's
    positives; ``first_only=True`` gives the classic ``1/rank`` of the best-ranked positive.

    Args:
        labels: (N,) bool or 0/1.  scores: (N,) float.  groups: (N,) impression/request ids.

    Returns:
        float in (0, 1], the unweighted mean over groups; ``nan`` if no group has a positive.
    """
    return _nanmean(_group_mrr(_prepare(labels, scores, groups), first_only))


def ndcg_at_k(labels: Any, scores: Any, groups: Any, k: int) -> float:
    """Mean nDCG@k over impressions (groups) that have at least one positive.

    Per group: ``DCG@k = sum_{r<=k} label_r / log2(r+1)`` with rows ranked by score
    (descending, ties by input order), divided by the ideal ``IDCG@k = sum_{r<=min(k,P)}
    1/log2(r+1)`` where P is the group's number of positives. Binary gains (``2^l - 1 = l``).

    Returns:
        float in [0, 1], the unweighted mean over groups; ``nan`` if no group has a positive.
    """
    k = _k(k)
    return _nanmean(_group_ndcg(_prepare(labels, scores, groups), k))


def impression_metrics(labels: Any, scores: Any, groups: Any) -> dict[str, float | int]:
    """The MIND leaderboard metrics for one scored set of impressions.

    Args:
        labels: (N,) bool or 0/1 (clicked).  scores: (N,) float.  groups: (N,) impression ids.

    Returns:
        ``auc``: unweighted mean of per-impression AUC over impressions with both classes
        (what MIND reports as AUC); ``gauc``: the same per-impression AUCs weighted by
        impression size (see ``gauc``); ``mrr`` (MIND definition), ``ndcg@5``, ``ndcg@10``:
        means over impressions with >= 1 click; ``n_rows``, ``n_groups`` (all impressions),
        ``n_groups_auc`` (used for auc/gauc), ``n_groups_ranking`` (used for mrr/ndcg).
    """
    r = _prepare(labels, scores, groups)
    per_auc, valid = _group_auc(r)
    return {
        "auc": _nanmean(per_auc),
        "gauc": _weighted_gauc(per_auc, valid, r.size),
        "mrr": _nanmean(_group_mrr(r, first_only=False)),
        "ndcg@5": _nanmean(_group_ndcg(r, 5)),
        "ndcg@10": _nanmean(_group_ndcg(r, 10)),
        "n_rows": int(len(r.cs)),
        "n_groups": int(r.n_groups),
        "n_groups_auc": int(valid.sum()),
        "n_groups_ranking": int((r.n_pos > 0).sum()),
    }


# --------------------------------------------------------------------------- calibration


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins on [0, 1].

    Bin b holds probabilities in ``[b/B, (b+1)/B)`` (the last bin also holds 1.0);
    ``ECE = sum_b (n_b / N) * |mean(labels in b) - mean(probs in b)|``.

    Args:
        labels: (N,) bool or 0/1.  probs: (N,) float in [0, 1].  n_bins: >= 1.

    Returns:
        float in [0, 1].
    """
    y = _labels(labels)
    p = _scores(probs, len(y), name="probs")
    if (p < 0).any() or (p > 1).any():
        raise SchemaError("probs: probabilities must lie in [0, 1]")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise SchemaError(f"n_bins: expected an integer >= 1, got {n_bins!r}")
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    sum_y = np.bincount(b, weights=y, minlength=n_bins)
    sum_p = np.bincount(b, weights=p, minlength=n_bins)
    return float(np.sum(np.abs(sum_y - sum_p)) / len(y))
