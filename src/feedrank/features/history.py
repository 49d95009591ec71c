"""Point-in-time user histories built from click events (no future leaks).

A "history" is the user's last ``L`` clicked item indices strictly before a time ``t``,
most recent last, left-padded with -1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClickLog:
    """Clicks sorted by (user, ts): ``user_codes``, ``ts``, ``items`` are (C,);
    ``starts[u]``/``ends[u]`` delimit user ``u``'s block."""

    user_codes: np.ndarray
    ts: np.ndarray
    items: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def build(cls, user_codes: np.ndarray, ts: np.ndarray, items: np.ndarray, n_users: int) -> ClickLog:
        order = np.lexsort((ts, user_codes))
        uc = user_codes[order].astype(np.int64)
        starts = np.searchsorted(uc, np.arange(n_users), side="left")
        ends = np.searchsorted(uc, np.arange(n_users), side="right")
        return cls(uc, ts[order].astype(np.float64), items[order].astype(np.int64), starts, ends)

    def positions_before(self, user_codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """For each query, the index into the sorted log of the first click at or after
        ``ts`` in that user's block (= one past the last click strictly before ``ts``)."""
        user_codes = np.asarray(user_codes, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.float64)
        # Sort queries the same way and merge: one searchsorted per user block would loop;
        # instead encode (user, rank of ts) in a single sortable float key per user.
        out = np.empty(len(ts), dtype=np.int64)
        if len(self.ts) == 0:
            out[:] = 0
            return out
        span = float(max(self.ts.max(), ts.max()) - min(self.ts.min(), ts.min())) + 2.0
        base = min(self.ts.min(), ts.min()) - 1.0
        log_key = self.user_codes.astype(np.float64) * span + (self.ts - base)
        q_key = user_codes.astype(np.float64) * span + (ts - base)
        if user_codes.max(initial=0) * span > 2**52:
            # key would lose precision: fall back to per-user search
            for i, (u, t) in enumerate(zip(user_codes, ts)):
                s, e = self.starts[u], self.ends[u]
                out[i] = s + np.searchsorted(self.ts[s:e], t, side="left")
            return out
        return np.searchsorted(log_key, q_key, side="left").astype(np.int64)

    def histories(self, user_codes: np.ndarray, ts: np.ndarray, length: int) -> np.ndarray:
        """(Q, length) int64 item indices clicked strictly before ``ts``; -1 padded left."""
        user_codes = np.asarray(user_codes, dtype=np.int64)
        ends = self.positions_before(user_codes, ts)
        return self.windows(user_codes, ends, length)

    def windows(self, user_codes: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
        starts = self.starts[user_codes] if len(user_codes) else np.zeros(0, dtype=np.int64)
        idx = ends[:, None] - length + np.arange(length)[None, :]
        valid = idx >= starts[:, None]
        idx = np.where(valid, idx, 0)
        if len(self.items) == 0:
            return np.full((len(user_codes), length), -1, dtype=np.int64)
        return np.where(valid, self.items[idx], -1)

    def final_histories(self, length: int) -> np.ndarray:
        """(U, length): every user's last ``length`` clicks (state at the end of the log)."""
        users = np.arange(len(self.starts), dtype=np.int64)
        return self.windows(users, self.ends.astype(np.int64), length)


def category_affinity(histories: np.ndarray, item_cat: np.ndarray, n_cats: int, smoothing: float = 1.0) -> np.ndarray:
    """(Q, n_cats) float32: smoothed share of each category in each history."""
    q = histories.shape[0]
    valid = histories >= 0
    cats = np.where(valid, item_cat[np.where(valid, histories, 0)], 0)
    counts = np.zeros((q, n_cats), dtype=np.float32)
    rows = np.repeat(np.arange(q), histories.shape[1])
    np.add.at(counts, (rows[valid.ravel()], cats.ravel()[valid.ravel()]), 1.0)
    total = counts.sum(axis=1, keepdims=True)
    return (counts + smoothing / n_cats) / (total + smoothing)


def category_share(histories: np.ndarray, item_cat: np.ndarray, n_cats: int, strength: float = 1.0,
                   decay: float = 1.0, population: np.ndarray | None = None) -> np.ndarray:
    """(Q, n_cats) float64: each history's category preference, a recency-weighted and
    population-smoothed share of its categories::

        a[c] = (sum_k decay**r_k [cat_k = c] + strength * pi[c]) / (sum_k decay**r_k + strength)

    ``histories`` (Q, L) item rows (-1 padding on the left, most recent last), ``r_k`` = 0
    for the newest click, 1 for the one before...; ``pi`` = ``population`` (n_cats,), > 0,
    summing to 1 (None: uniform 1/n_cats). ``decay`` 1 and ``strength`` 1 with a uniform
    ``pi`` is ``category_affinity`` (in float64). Every row is > 0 and sums to 1; an empty
    history gives ``pi``. Cost O(Q * L): nothing per catalogue item."""
    h = np.asarray(histories, dtype=np.int64)
    if h.ndim != 2:
        raise ValueError(f"category_share: histories must be (Q, L), got shape {h.shape}")
    if n_cats < 1:
        raise ValueError(f"category_share: n_cats must be >= 1, got {n_cats}")
    if not (strength > 0 and np.isfinite(strength)):
        raise ValueError(f"category_share: strength must be > 0, got {strength}")
    if not 0 < decay <= 1:
        raise ValueError(f"category_share: decay must be in (0, 1], got {decay}")
    if population is None:
        pi = np.full(n_cats, 1.0 / n_cats)
    else:
        pi = np.asarray(population, dtype=np.float64)
        if pi.shape != (n_cats,) or not (pi > 0).all() or abs(pi.sum() - 1.0) > 1e-6:
            raise ValueError(f"category_share: population must be {n_cats} shares > 0 summing to 1, "
                             f"got shape {pi.shape}, min {pi.min(initial=np.inf):g}, sum {pi.sum():g}")
    q, length = h.shape
    valid = h >= 0
    cats = _history_categories(h[valid], item_cat, n_cats, "category_share")
    w = np.where(valid, float(decay) ** np.arange(length - 1, -1, -1, dtype=np.float64)[None, :], 0.0)
    counts = np.zeros((q, n_cats), dtype=np.float64)
    rows = np.broadcast_to(np.arange(q)[:, None], (q, length))
    np.add.at(counts, (rows[valid], cats), w[valid])
    return (counts + strength * pi[None, :]) / (w.sum(axis=1, keepdims=True) + strength)


def category_share_one(history: np.ndarray, item_cat: np.ndarray, pi: np.ndarray, strength: float,
                       powers: np.ndarray) -> np.ndarray:
    """``category_share`` of one history (L,) (serving: one user per request), bitwise
    ``category_share(history[None, :], ...)[0]`` at a fraction of its cost (one ``bincount``, no
    checks of the parameters): ``pi`` (n_cats,) the smoothing shares (uniform or the
    population's, as ``category_share`` makes them), ``powers`` (>= L,) ``decay ** r`` with
    the newest click's power last (``decay ** arange(M - 1, -1, -1)``)."""
    h = np.asarray(history, dtype=np.int64)
    if h.ndim != 1 or len(h) > len(powers):
        raise ValueError(f"category_share_one: history must be (L,) with L <= {len(powers)}, got shape {h.shape}")
    valid = h >= 0
    cats = _history_categories(h[valid], item_cat, len(pi), "category_share_one")
    w = np.where(valid, powers[len(powers) - len(h):], 0.0)
    counts = np.bincount(cats, weights=w[valid], minlength=len(pi))
    return (counts + strength * pi) / (w.sum() + strength)


def _history_categories(rows: np.ndarray, item_cat: np.ndarray, n_cats: int, who: str) -> np.ndarray:
    """The category codes of history item ``rows`` (>= 0), checked: every row in the
    catalogue and every code in 0..n_cats-1, else a ValueError naming ``who``."""
    if len(rows) and rows.max() >= len(item_cat):
        raise ValueError(f"{who}: history item rows must be < {len(item_cat)} (the catalogue's size), got {int(rows.max())}")
    cats = np.asarray(item_cat)[rows]
    if len(cats) and (cats.min() < 0 or cats.max() >= n_cats):
        raise ValueError(f"{who}: history item categories must be in 0..{n_cats - 1}, "
                         f"got {int(cats.min())}..{int(cats.max())}")
    return cats


def population_shares(click_items: np.ndarray, item_cat: np.ndarray, n_cats: int) -> np.ndarray:
    """(n_cats,) float64: each category's share of ``click_items`` (item rows), smoothed like
    one history of all of them (``+ 1/n_cats`` per category, ``/ (n + 1)``): > 0 for a
    category nobody clicked, sums to 1."""
    cats = _history_categories(np.asarray(click_items, dtype=np.int64), item_cat, n_cats, "population_shares")
    counts = np.bincount(cats, minlength=n_cats).astype(np.float64)
    return (counts + 1.0 / n_cats) / (len(cats) + 1.0)


def counts_before(groups: np.ndarray, ts: np.ndarray, query_groups: np.ndarray, query_ts: np.ndarray, n_groups: int) -> np.ndarray:
    """(Q,) int64: number of (group, ts) events with the query's group and ts < query ts.

    Point-in-time counters: an impression never sees events from its own future."""
    log = ClickLog.build(np.asarray(groups, dtype=np.int64), np.asarray(ts, dtype=np.float64),
                         np.zeros(len(groups), dtype=np.int64), n_groups)
    qg = np.asarray(query_groups, dtype=np.int64)
    pos = log.positions_before(qg, np.asarray(query_ts, dtype=np.float64))
    return pos - log.starts[qg]
