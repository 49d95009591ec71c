"""The served retrieval score, off-line: ANN top + recent pool + popular list, rescored with
the prior (what ``pipeline/candidates.py`` does per request), for evaluation and benches.

    pool = prior_pool(published_at, live_mask, now, hours, clicks, popular_n=300)
    items = served_top(prior, user_vec, ann_rows, pool, item_vecs, published_at, now, k,
                       counters, past, has_history)

Serving rescores the ANN's ``ann_oversample * ann_k`` nearest items, the newest live items
(at most ``PRIOR_POOL_MAX``, published within ``max(fresh_hours, followed_hours)``) and the
top of the popular list (clicks discounted by age) with ``rescore_with_prior`` and keeps the
best ``ann_k``. ``feedrank eval`` and ``feedrank bench retrieval`` score the same way: both
sides go through ``RescorePool.top`` (serving keeps one ``RescorePool`` while its pool's rows
stay the same, so a request does not gather the pool's vectors again).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from feedrank.retrieval.counters import ItemCounters
from feedrank.retrieval.prior import AgePrior, rescore_with_prior
from feedrank.retrieval.sources import popular_items, sorted_unique

PRIOR_POOL_MAX = 5_000  # newest live items rescored besides the ANN's top (bounds the cost); serving uses it too


def prior_pool(published_at: np.ndarray, live_mask: np.ndarray, now: float, hours: float, clicks: np.ndarray,
               popular_n: int, pool_max: int = PRIOR_POOL_MAX) -> np.ndarray:
    """Sorted item rows rescored besides the ANN's top: the newest ``pool_max`` live items
    published within ``hours`` before ``now`` (or later: an item with an unknown or future
    publish time is not "recent"), and the ``popular_n`` best live items of the popular list."""
    pub = np.nan_to_num(published_at, nan=-np.inf)
    recent = np.flatnonzero(live_mask & (pub >= now - hours * 3600.0) & (pub <= now))
    if len(recent) > pool_max:
        recent = recent[np.lexsort((recent, -pub[recent]))[:pool_max]]
    live = np.flatnonzero(live_mask)
    age = np.where(np.isfinite(pub[live]), now - pub[live], 0.0)
    top = live[popular_items(clicks[live], age, popular_n)] if popular_n > 0 and len(live) else np.zeros(0, np.int64)
    return np.union1d(recent, top).astype(np.int64)


def popular_pool_size(prior: AgePrior, ann_k: int) -> int:
    """How many of the popular list serving adds to the rescored pool: ``ann_k`` when a
    popularity weight is in use (for users with or without history), else none."""
    uses = prior.uses_clicks or (prior.cold_user is not None and prior.cold_user.uses_clicks)
    return ann_k if uses else 0


@dataclass(frozen=True)
class RescorePool:
    """The rows rescored besides the ANN's top (sorted, unique), with their item vectors and
    publish times gathered once. ``parts`` are the arrays it was made from (what serving
    compares the next request's pool with). Rows' vectors never change (an item update
    moves the item to a new row), so a pool stays valid while its rows do."""

    parts: tuple[np.ndarray, ...]
    rows: np.ndarray            # (M,) int64, sorted unique
    vectors: np.ndarray         # (M, D) float32
    published_at: np.ndarray    # (M,) float64
    # per thread: (M + room, D) float32 whose first M rows are ``vectors``; a request writes the
    # ANN's extra rows after them instead of concatenating a copy of the whole pool
    _scratch: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    @classmethod
    def build(cls, parts: tuple[np.ndarray, ...], item_vecs: np.ndarray, published_at: np.ndarray) -> RescorePool:
        rows = sorted_unique(*parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        return cls(tuple(np.array(p, copy=True) for p in parts), rows, np.ascontiguousarray(item_vecs[rows]),
                   np.asarray(published_at, dtype=np.float64)[rows])

    def same(self, parts: tuple[np.ndarray, ...]) -> bool:
        """True when ``parts`` hold the rows this pool was made from, in the same order."""
        return len(parts) == len(self.parts) and all(
            len(a) == len(b) and np.array_equal(a, b) for a, b in zip(parts, self.parts))

    def top(self, prior: AgePrior, user_vec: np.ndarray, ann_rows: np.ndarray, item_vecs: np.ndarray,
            published_at: np.ndarray, now: float, k: int, clicks: np.ndarray | None = None,
            counters: ItemCounters | None = None, past: np.ndarray | None = None,
            has_history: bool = True, affinity: np.ndarray | None = None,
            categories: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``rescore_with_prior`` over the union of ``ann_rows`` (-1 padding ignored) and the
        pool, minus ``past``: the best ``k`` (rows, scores), best first, ties by row.
        ``clicks`` (N,) / ``counters`` (N rows) are catalogue-wide; only the union's rows are
        read; so are ``categories`` (N,) category codes (with ``affinity`` (C,), the user's
        category shares: the prior's category term). The union is the pool followed by the
        ANN rows not in it (the pool's vectors stay in a per-thread buffer, only the ANN rows
        are gathered): the same rows and scores as rescoring the sorted union afresh,
        up to float32 rounding of the dot products (BLAS may round a row differently at
        another position) and which of exactly tied scores at the k-th place is kept."""
        ann = np.asarray(ann_rows, dtype=np.int64)
        ann = ann[ann >= 0]
        pool = self.rows
        if len(pool) and len(ann):
            pos = np.minimum(np.searchsorted(pool, ann), len(pool) - 1)
            ann = ann[pool[pos] != ann]
        if len(ann):
            extra = sorted_unique(ann)
            cand = np.concatenate([pool, extra])
            vecs = self._with_rows(item_vecs, extra)
            pub = np.concatenate([self.published_at, np.asarray(published_at, dtype=np.float64)[extra]])
        else:
            cand, vecs, pub = pool, self.vectors, self.published_at
        if past is not None and len(past):
            keep = ~np.isin(cand, past)
            cand, vecs, pub = cand[keep], vecs[keep], pub[keep]
        if categories is not None and not prior.for_user(has_history).category_weight:
            categories = None  # no category term: nothing reads them (a gather of the whole union saved)
        return rescore_with_prior(prior, user_vec, cand, vecs, pub, now, k,
                                  clicks=None if clicks is None else np.asarray(clicks)[cand],
                                  counters=None if counters is None else counters.take(cand), has_history=has_history,
                                  affinity=affinity, categories=None if categories is None else np.asarray(categories)[cand])

    def _with_rows(self, item_vecs: np.ndarray, extra: np.ndarray) -> np.ndarray:
        """(M + len(extra), D): the pool's vectors then ``item_vecs[extra]``, in this thread's
        scratch buffer (the pool's rows are copied in once per thread, not per request). The
        view is valid until this thread's next call."""
        m, n = len(self.rows), len(extra)
        buf = getattr(self._scratch, "buf", None)
        if buf is None or buf.shape[0] < m + n or buf.shape[1:] != self.vectors.shape[1:] or buf.dtype != item_vecs.dtype:
            buf = np.empty((m + max(n, 1024), *self.vectors.shape[1:]), dtype=item_vecs.dtype)
            buf[:m] = self.vectors
            self._scratch.buf = buf
        np.take(item_vecs, extra, axis=0, out=buf[m:m + n])
        return buf[:m + n]


def served_top(prior: AgePrior, user_vec: np.ndarray, ann_rows: np.ndarray, pool: np.ndarray, item_vecs: np.ndarray,
               published_at: np.ndarray, now: float, k: int, counters: ItemCounters, past: np.ndarray | None = None,
               has_history: bool = True, affinity: np.ndarray | None = None,
               categories: np.ndarray | None = None) -> np.ndarray:
    """The best ``k`` rows of ANN rows (``ann_rows``, -1 padding ignored) and ``pool``, minus
    ``past`` (rows the user already clicked), by ``u.v/T + prior`` at ``now`` (``affinity``
    (C,) and ``categories`` (N,): the category term's inputs, as ``RescorePool.top``)."""
    got, _ = RescorePool.build((np.asarray(pool, dtype=np.int64),), item_vecs, published_at).top(
        prior, user_vec, ann_rows, item_vecs, published_at, now, k, counters=counters, past=past, has_history=has_history,
        affinity=affinity, categories=categories)
    return got
