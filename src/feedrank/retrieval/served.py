"""The served retrieval score, off-line: ANN top + recent pool + popular list, rescored with
the prior (what ``pipeline/candidates.py`` does per request), for evaluation and benches.

    pool = prior_pool(published_at, live_mask, now, hours, clicks, popular_n=300)
    items = served_top(prior, user_vec, ann_rows, pool, item_vecs, published_at, now, k,
                       counters, past, has_history)

Serving rescores the ANN's ``ann_oversample * ann_k`` nearest items, the newest live items
(at most ``PRIOR_POOL_MAX``, published within ``max(fresh_hours, followed_hours)``) and the
top of the popular list (clicks discounted by age) with ``rescore_with_prior`` and keeps the
best ``ann_k``. ``feedrank eval`` and ``feedrank bench retrieval`` score the same way.
"""

from __future__ import annotations

import numpy as np

from feedrank.retrieval.counters import ItemCounters
from feedrank.retrieval.prior import AgePrior, rescore_with_prior
from feedrank.retrieval.sources import popular_items

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
    pops = [prior.pop_weight] + ([prior.cold_user.pop_weight] if prior.cold_user is not None else [])
    return ann_k if max(pops) > 0 else 0


def served_top(prior: AgePrior, user_vec: np.ndarray, ann_rows: np.ndarray, pool: np.ndarray, item_vecs: np.ndarray,
               published_at: np.ndarray, now: float, k: int, counters: ItemCounters, past: np.ndarray | None = None,
               has_history: bool = True) -> np.ndarray:
    """The best ``k`` rows of ANN rows (``ann_rows``, -1 padding ignored) and ``pool``, minus
    ``past`` (rows the user already clicked), by ``u.v/T + prior`` at ``now``."""
    cand = np.union1d(ann_rows[ann_rows >= 0].astype(np.int64), pool)
    if past is not None and len(past):
        cand = cand[~np.isin(cand, past)]
    got, _ = rescore_with_prior(prior, user_vec, cand, item_vecs[cand], published_at[cand], now, k,
                                counters=counters.take(cand), has_history=has_history)
    return got
