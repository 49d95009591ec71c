"""Ranked lists (retrieval): ``recall_at_k``, ``hit_rate_at_k``, ``ndcg_at_k_lists``,
``coverage`` (conventions: the package docstring, ``feedrank.evaluation.metrics``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from feedrank.errors import SchemaError
from feedrank.evaluation.metrics._inputs import _discounts, _k


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
