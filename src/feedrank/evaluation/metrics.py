"""Offline metrics: pure functions of arrays (no I/O, no clock), vectorised.

Three families, all defined in ``docs/metrics.md``:

* scored rows (one row = one shown item): ``auc``, ``gauc``, ``expected_calibration_error``;
* impressions (rows grouped by a request/impression id): ``mrr``, ``ndcg_at_k`` and the
  MIND-style bundle ``impression_metrics``;
* ranked lists (retrieval): ``recall_at_k``, ``ndcg_at_k_lists``, ``hit_rate_at_k``,
  ``coverage``.

Every grouped metric works by sorting once (``np.lexsort`` on ``(group, score)``) and
reducing with ``np.bincount``; nothing loops over groups in Python, so millions of rows
take about a second. Group ids may be any hashable values (ints, strings); they are
factorised with ``pandas.factorize`` (hashing, O(n)).

Conventions:

* ``labels`` are binary: bool, or numbers that are all 0 or 1. Anything else, a NaN score,
  mismatched lengths or empty input raise ``SchemaError`` with a message naming the field.
* Averages are taken over the groups (users) for which the metric is defined; when there
  are none the result is ``nan`` (never an exception), so a caller can report "n/a".
* Ranking ties (equal scores inside one group) are broken by input order: the earlier row
  ranks higher. AUC instead counts a tied positive/negative pair as half a win.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from feedrank.errors import SchemaError

__all__ = [
    "auc",
    "gauc",
    "mrr",
    "ndcg_at_k",
    "impression_metrics",
    "recall_at_k",
    "ndcg_at_k_lists",
    "hit_rate_at_k",
    "coverage",
    "expected_calibration_error",
]


# --------------------------------------------------------------------------- validation


def _labels(labels: Any, name: str = "labels") -> np.ndarray:
    """(N,) binary labels -> (N,) float64 of 0.0/1.0."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise SchemaError(f"{name}: expected a 1-D array, got shape {y.shape}")
    if y.size == 0:
        raise SchemaError(f"{name}: empty input (need at least one row)")
    if y.dtype == bool:
        return y.astype(np.float64)
    if y.dtype.kind not in "iuf":
        raise SchemaError(f"{name}: expected bool or numeric 0/1 labels, got dtype {y.dtype}")
    y = y.astype(np.float64, copy=False)
    bad = ~((y == 0.0) | (y == 1.0))
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise SchemaError(f"{name}: labels must be 0 or 1; {int(bad.sum())} row(s) are not, first at rows {rows}")
    return y


def _scores(scores: Any, n: int, name: str = "scores") -> np.ndarray:
    """(N,) scores -> (N,) float64; NaN is an error, +-inf is allowed (it ranks)."""
    s = np.asarray(scores)
    if s.ndim != 1:
        raise SchemaError(f"{name}: expected a 1-D array, got shape {s.shape}")
    if s.dtype.kind not in "iufb":
        raise SchemaError(f"{name}: expected numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if len(s) != n:
        raise SchemaError(f"{name}: length {len(s)} does not match labels length {n}")
    nan = np.isnan(s)
    if nan.any():
        rows = np.flatnonzero(nan)[:5].tolist()
        raise SchemaError(f"{name}: {int(nan.sum())} NaN score(s), first at rows {rows}")
    return s


def _groups(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """(N,) group ids of any hashable type -> ((N,) int64 codes in 0..G-1, G)."""
    g = groups if isinstance(groups, (pd.Series, pd.Index)) else np.asarray(groups)
    if g.ndim != 1:
        raise SchemaError(f"groups: expected a 1-D array, got shape {g.shape}")
    if len(g) != n:
        raise SchemaError(f"groups: length {len(g)} does not match labels length {n}")
    codes, uniques = pd.factorize(g, sort=False)  # a Series keeps its fast (Arrow) path
    codes = np.asarray(codes)
    if (codes < 0).any():
        rows = np.flatnonzero(codes < 0)[:5].tolist()
        raise SchemaError(f"groups: null group id(s), first at rows {rows}")
    return codes.astype(np.int64, copy=False), len(uniques)


def _k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SchemaError(f"k: expected an integer >= 1, got {k!r}")
    return int(k)


def _discounts(k: int) -> np.ndarray:
    """(k,) 1/log2(rank+1) for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


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


# --------------------------------------------------------------------------- ranked lists


def _flatten_retrieved(retrieved: Any, k: int | None, pad: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Top-k of each list -> ((M,) user index, (M,) 0-based rank, (M,) item id, n_users)."""
    if isinstance(retrieved, np.ndarray):
        if retrieved.ndim != 2:
            raise SchemaError(f"retrieved: expected a 2-D array (users, list length), got shape {retrieved.shape}")
        top = retrieved if k is None else retrieved[:, :k]
        n_users, width = top.shape
        user = np.repeat(np.arange(n_users, dtype=np.int64), width)
        rank = np.tile(np.arange(width, dtype=np.int64), n_users)
        items = top.reshape(-1)
    else:
        lists = [r if k is None else r[:k] for r in retrieved]
        n_users = len(lists)
        lens = np.fromiter((len(r) for r in lists), dtype=np.int64, count=n_users)
        user = np.repeat(np.arange(n_users, dtype=np.int64), lens)
        starts = np.concatenate(([0], np.cumsum(lens)[:-1])) if n_users else np.zeros(0, dtype=np.int64)
        rank = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)
        flat = list(itertools.chain.from_iterable(lists))
        items = np.asarray(flat) if flat else np.zeros(0, dtype=np.int64)
        if items.ndim != 1:
            items = np.asarray(flat, dtype=object)
    if pad is not None and len(items):
        keep = items != pad
        if isinstance(keep, np.ndarray) and keep.shape == items.shape:
            user, rank, items = user[keep], rank[keep], items[keep]
    return user, rank, items, n_users


def _flatten_relevant(relevant: Sequence[Iterable[Any]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Relevant sets -> ((R,) user index, (R,) item id, n_users)."""
    rel = [r if isinstance(r, (set, frozenset, list, tuple, np.ndarray)) else list(r) for r in relevant]
    n_users = len(rel)
    lens = np.fromiter((len(r) for r in rel), dtype=np.int64, count=n_users)
    user = np.repeat(np.arange(n_users, dtype=np.int64), lens)
    flat = list(itertools.chain.from_iterable(rel))
    items = np.asarray(flat) if flat else np.zeros(0, dtype=np.int64)
    if items.ndim != 1:
        items = np.asarray(flat, dtype=object)
    return user, items, n_users


def _joint_codes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Factorise two id arrays into one shared integer code space."""
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        both = np.concatenate([a.astype(np.int64), b.astype(np.int64)])
    elif a.dtype.kind == b.dtype.kind and a.dtype.kind in "US":
        both = np.concatenate([a, b])
    else:  # mixed or object: compare as Python objects (1 != "1")
        both = np.concatenate([a.astype(object), b.astype(object)])
    codes, uniques = pd.factorize(both, sort=False)
    return codes[: len(a)].astype(np.int64), codes[len(a):].astype(np.int64), max(len(uniques), 1)


def _list_hits(retrieved: Any, relevant: Sequence[Iterable[Any]], k: int, pad: Any):
    """Shared core of the list metrics.

    Returns ``(user, rank, hit, n_rel, n_users)``: for each kept top-k entry its user, rank
    and whether it is a relevant item seen for the first time in that list; and (U,) the
    number of relevant items per user.
    """
    k = _k(k)
    r_user, r_rank, r_items, n_users = _flatten_retrieved(retrieved, k, pad)
    if n_users == 0:
        raise SchemaError("retrieved: empty input (need at least one user)")
    rel_user, rel_items, n_rel_users = _flatten_relevant(relevant)
    if n_rel_users != n_users:
        raise SchemaError(f"relevant: {n_rel_users} users but retrieved has {n_users}")
    r_code, rel_code, n_codes = _joint_codes(r_items, rel_items)
    r_key = r_user * n_codes + r_code
    rel_key = np.unique(rel_user * n_codes + rel_code)  # dedupes relevant lists too
    n_rel = np.bincount(rel_key // n_codes, minlength=n_users).astype(np.float64)
    # one stable sort: first occurrence of each (user, item) and membership in relevant
    order = np.argsort(r_key, kind="stable")
    sk = r_key[order]
    first = np.ones(len(sk), dtype=bool)
    first[1:] = sk[1:] != sk[:-1]
    if len(rel_key):
        j = np.minimum(np.searchsorted(rel_key, sk), len(rel_key) - 1)
        member = rel_key[j] == sk
    else:
        member = np.zeros(len(sk), dtype=bool)
    hit = np.empty(len(sk), dtype=bool)
    hit[order] = first & member
    return r_user, r_rank, hit, n_rel, n_users


def recall_at_k(retrieved: Any, relevant: Sequence[Iterable[Any]], k: int, *, pad: Any = None) -> float:
    """Mean over users with >= 1 relevant item of ``|top-k ∩ relevant| / |relevant|``.

    Args:
        retrieved: per user a ranked list of item ids (best first): a list of sequences, or
            a (U, L) array. Entries equal to ``pad`` (e.g. -1 from FAISS) are ignored; a
            repeated item counts once.
        relevant: (U,) list of sets of item ids (the held-out positives).
        k: cut-off, >= 1.

    Returns:
        float in [0, 1]; ``nan`` if no user has a relevant item.
    """
    user, _, hit, n_rel, n_users = _list_hits(retrieved, relevant, k, pad)
    hits = np.bincount(user, weights=hit.astype(np.float64), minlength=n_users)
    ok = n_rel > 0
    return float(np.mean(hits[ok] / n_rel[ok])) if ok.any() else float("nan")


def hit_rate_at_k(retrieved: Any, relevant: Sequence[Iterable[Any]], k: int, *, pad: Any = None) -> float:
    """Fraction of users (with >= 1 relevant item) whose top-k holds at least one relevant item."""
    user, _, hit, n_rel, n_users = _list_hits(retrieved, relevant, k, pad)
    hits = np.bincount(user, weights=hit.astype(np.float64), minlength=n_users)
    ok = n_rel > 0
    return float(np.mean(hits[ok] > 0)) if ok.any() else float("nan")


def ndcg_at_k_lists(retrieved: Any, relevant: Sequence[Iterable[Any]], k: int, *, pad: Any = None) -> float:
    """Mean binary-gain nDCG@k over users with >= 1 relevant item.

    ``DCG@k = sum over ranks r<=k holding a relevant item of 1/log2(r+1)``;
    ``IDCG@k = sum_{r<=min(k, |relevant|)} 1/log2(r+1)``. Ranks are positions in the given
    list (a ``pad`` entry keeps its slot). Same arguments as ``recall_at_k``.
    """
    k = _k(k)
    user, rank, hit, n_rel, n_users = _list_hits(retrieved, relevant, k, pad)
    disc = _discounts(k)
    dcg = np.bincount(user[hit], weights=disc[rank[hit]], minlength=n_users)
    ok = n_rel > 0
    if not ok.any():
        return float("nan")
    ideal = np.cumsum(disc)[np.minimum(n_rel[ok], k).astype(np.int64) - 1]
    return float(np.mean(dcg[ok] / ideal))


def coverage(retrieved_lists: Any, n_catalog: int, *, k: int | None = None, pad: Any = None) -> float:
    """Catalog coverage: distinct items appearing in any (top-k) list / ``n_catalog``.

    Args:
        retrieved_lists: list of sequences or a (U, L) array of item ids.
        n_catalog: number of items in the catalog, >= 1.
        k: only the first k of each list count (default: whole lists).
    """
    if isinstance(n_catalog, bool) or not isinstance(n_catalog, (int, np.integer)) or n_catalog < 1:
        raise SchemaError(f"n_catalog: expected an integer >= 1, got {n_catalog!r}")
    if k is not None:
        k = _k(k)
    _, _, items, n_users = _flatten_retrieved(retrieved_lists, k, pad)
    if n_users == 0:
        raise SchemaError("retrieved_lists: empty input (need at least one list)")
    if len(items) == 0:
        return 0.0
    n_distinct = len(pd.unique(items if items.dtype != object else items.astype(object)))
    return float(n_distinct / n_catalog)


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


# --------------------------------------------------------------------------- issue 8: debiased and beyond-accuracy


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
