"""Point-in-time engagement counters for the retrieval prior (fit, replay evaluation, serving).

    replay = CounterReplay(n_items, click_items, click_ts, imp_items, imp_ts, creator_codes(catalog))
    replay.advance(t)            # folds in every event with ts < t (never one at or after t)
    c = replay.snapshot()        # ItemCounters: (N,) clicks, impressions, creator clicks/impressions
    mats = counters_at(replay_factory(), ts)   # the same, one row per query time, (Q, N) each

What serving reads from its live counters (``Recommender.state``: item clicks and
impressions, updated as events arrive) is what these give at a request's time: the counts
of everything that happened strictly before it. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNKNOWN_CREATORS = frozenset({"", "unknown", "none", "nan"})
RECENT_TAU_S = 24 * 3600.0  # time constant of the decayed click counter (serving's 24 h engagement counter)


@dataclass(frozen=True)
class ItemCounters:
    """Counts (N,) float64 at one moment, per catalogue item. ``creator_*`` are the totals
    of the item's creator (every item of that creator), 0 where the creator is unknown;
    ``impressions`` / ``creator_*`` are None when the data has no impressions;
    ``recent_clicks`` are clicks decayed with time constant ``RECENT_TAU_S`` (None: unknown);
    ``feedback`` (N, D) the shrunk mean vector of each item's clickers so far
    (``retrieval/item_feedback.py``; None: not tracked)."""

    clicks: np.ndarray
    impressions: np.ndarray | None = None
    creator_clicks: np.ndarray | None = None
    creator_impressions: np.ndarray | None = None
    recent_clicks: np.ndarray | None = None
    feedback: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> ItemCounters:
        """The counters of items ``idx`` only."""
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return ItemCounters(self.clicks[idx], pick(self.impressions), pick(self.creator_clicks),
                            pick(self.creator_impressions), pick(self.recent_clicks), pick(self.feedback))


def creator_codes(creators: np.ndarray) -> np.ndarray:
    """(N,) int64 creator code per item from raw creator strings; -1 for unknown/missing
    creators (MovieLens has none), which then never share counts."""
    raw = np.asarray(creators, dtype=object)
    keys = np.array(["" if c is None else str(c).strip() for c in raw], dtype=object)
    known = np.array([k.lower() not in UNKNOWN_CREATORS for k in keys], dtype=bool)
    out = np.full(len(keys), -1, dtype=np.int64)
    if known.any():
        _, inv = np.unique(keys[known].astype(str), return_inverse=True)
        out[known] = inv
    return out


class CounterReplay:
    """Running per-item counts of clicks (and impressions) over time.

    ``advance(t)`` folds in every event with ``ts < t``: a snapshot taken after it never
    includes an event at or after ``t``. Times passed to ``advance`` must not decrease."""

    def __init__(self, n_items: int, click_items: np.ndarray, click_ts: np.ndarray,
                 imp_items: np.ndarray | None = None, imp_ts: np.ndarray | None = None,
                 creators: np.ndarray | None = None) -> None:
        self.n_items = int(n_items)
        self._clicks = self._sorted(click_items, click_ts, "click")
        self._imps = None if imp_items is None or imp_ts is None or not len(imp_items) else \
            self._sorted(imp_items, imp_ts, "impression")
        if creators is not None and len(creators) != self.n_items:
            raise ValueError(f"creators has {len(creators)} entries for {self.n_items} items")
        self.creators = None if creators is None else np.asarray(creators, dtype=np.int64)
        self.n_creators = 0 if self.creators is None else int(self.creators.max(initial=-1)) + 1
        self.clicks = np.zeros(self.n_items)
        self.recent = np.zeros(self.n_items)  # clicks decayed by exp(-age / RECENT_TAU_S), valued at self.t
        self.impressions = None if self._imps is None else np.zeros(self.n_items)
        self._pos = [0, 0]
        self.t = -np.inf

    def _sorted(self, items: np.ndarray, ts: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        items = np.asarray(items, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.float64)
        if items.shape != ts.shape:
            raise ValueError(f"{what} items {items.shape} and times {ts.shape} differ in shape")
        if len(items) and (items.min() < 0 or items.max() >= self.n_items):
            raise ValueError(f"{what} item index outside [0, {self.n_items})")
        order = np.argsort(ts, kind="stable")
        return items[order], ts[order]

    def advance(self, t: float) -> None:
        """Fold in the events with ts < ``t``."""
        if t < self.t:
            raise ValueError(f"CounterReplay.advance: time went back from {self.t} to {t}")
        if np.isfinite(self.t) and np.isfinite(t):
            self.recent *= np.exp(-(t - self.t) / RECENT_TAU_S)
        for k, (log, acc) in enumerate(((self._clicks, self.clicks), (self._imps, self.impressions))):
            if log is None:
                continue
            end = int(np.searchsorted(log[1], t, side="left"))
            if end > self._pos[k]:
                new = log[0][self._pos[k]:end]
                acc += np.bincount(new, minlength=self.n_items)
                if k == 0 and np.isfinite(t):
                    w = np.exp(-(t - log[1][self._pos[k]:end]) / RECENT_TAU_S)
                    self.recent += np.bincount(new, weights=w, minlength=self.n_items)
                self._pos[k] = end
        self.t = float(t)

    def snapshot(self) -> ItemCounters:
        """Copies of the counts as of the last ``advance``."""
        cc = ci = None
        if self.creators is not None and self.n_creators and self.impressions is not None:
            known = self.creators >= 0
            code = np.where(known, self.creators, 0)
            per_c = np.bincount(code[known], weights=self.clicks[known], minlength=self.n_creators)
            per_i = np.bincount(code[known], weights=self.impressions[known], minlength=self.n_creators)
            cc = np.where(known, per_c[code], 0.0)
            ci = np.where(known, per_i[code], 0.0)
        return ItemCounters(self.clicks.copy(), None if self.impressions is None else self.impressions.copy(), cc, ci,
                            self.recent.copy() if np.isfinite(self.t) else None)


def counters_at(replay: CounterReplay, ts: np.ndarray, items: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Counters at each query time ``ts`` (Q,), in the query order: a dict of (Q, M) float32
    arrays (``clicks``, ``recent_clicks`` and, with impressions, ``impressions``, ``creator_clicks``,
    ``creator_impressions``) over ``items`` (M,) (default all), the same values a
    ``CounterReplay`` advanced to each time gives (events strictly before it). Vectorised: each
    event is binned to the first query after it and the bins are summed cumulatively over the
    sorted queries (the decayed counter is carried forward query to query). ``replay``
    supplies the logs and creators and is not advanced."""
    ts = np.asarray(ts, dtype=np.float64)
    cols = np.arange(replay.n_items) if items is None else np.asarray(items, dtype=np.int64)
    q_order = np.argsort(ts, kind="stable")
    q_ts = ts[q_order]
    col_of = np.full(replay.n_items, -1, dtype=np.int64)
    col_of[cols] = np.arange(len(cols))

    def cumulative(ev_keys: np.ndarray, ev_ts: np.ndarray, n_keys: int) -> np.ndarray:
        """(Q, n_keys) float64: per sorted query, events of each key strictly before it."""
        first_q = np.searchsorted(q_ts, ev_ts, side="right")  # the first sorted query later than the event
        keep = (first_q < len(q_ts)) & (ev_keys >= 0)
        flat = first_q[keep] * n_keys + ev_keys[keep]
        return np.cumsum(np.bincount(flat, minlength=len(q_ts) * n_keys).reshape(len(q_ts), n_keys), axis=0,
                         dtype=np.float64)

    def unsort(sorted_rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(ts), sorted_rows.shape[1]), dtype=np.float32)
        out[q_order] = sorted_rows
        return out

    c_items, c_ts = replay._clicks
    out = {"clicks": unsort(cumulative(col_of[c_items], c_ts, len(cols))), "recent_clicks": unsort(
        _decayed(col_of[c_items], c_ts, q_ts, len(cols)))}
    if replay._imps is not None:
        i_items, i_ts = replay._imps
        out["impressions"] = unsort(cumulative(col_of[i_items], i_ts, len(cols)))
        if replay.creators is not None and replay.n_creators:
            known = replay.creators[cols] >= 0
            for name, (items_, ts_) in (("creator_clicks", replay._clicks), ("creator_impressions", replay._imps)):
                per = cumulative(replay.creators[items_], ts_, replay.n_creators)
                out[name] = unsort(np.where(known[None, :], per[:, np.maximum(replay.creators[cols], 0)], 0.0))
    return out


def _decayed(keys: np.ndarray, ev_ts: np.ndarray, q_ts: np.ndarray, n_keys: int) -> np.ndarray:
    """(Q, n_keys) float64 clicks decayed by ``exp(-age / RECENT_TAU_S)`` at each sorted query
    time ``q_ts``, events strictly before it (keys < 0 ignored)."""
    first_q = np.searchsorted(q_ts, ev_ts, side="right")
    out = np.zeros((len(q_ts), n_keys))
    run = np.zeros(n_keys)
    order = np.argsort(first_q, kind="stable")
    bounds = np.searchsorted(first_q[order], np.arange(len(q_ts) + 1), side="left")
    for q in range(len(q_ts)):
        if q and np.isfinite(q_ts[q]) and np.isfinite(q_ts[q - 1]):
            run *= np.exp(-(q_ts[q] - q_ts[q - 1]) / RECENT_TAU_S)
        new = order[bounds[q]:bounds[q + 1]]
        new = new[keys[new] >= 0]
        if len(new) and np.isfinite(q_ts[q]):
            run += np.bincount(keys[new], weights=np.exp(-(q_ts[q] - ev_ts[new]) / RECENT_TAU_S), minlength=n_keys)
        out[q] = run
    return out
