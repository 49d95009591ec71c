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
    ``CounterReplay`` advanced to each time gives (events strictly before it). One pass over
    the sorted queries that adds only the events since the previous query, kept for the M
    columns alone (and per creator). ``replay`` supplies the logs and creators; it is not advanced."""
    ts = np.asarray(ts, dtype=np.float64)
    cols = np.arange(replay.n_items) if items is None else np.asarray(items, dtype=np.int64)
    q_order = np.argsort(ts, kind="stable")
    q_ts = ts[q_order]
    col_of = np.full(replay.n_items, -1, dtype=np.int64)
    col_of[cols] = np.arange(len(cols))
    m = len(cols)
    with_creators = replay._imps is not None and replay.creators is not None and replay.n_creators > 0
    logs = {"clicks": replay._clicks} | ({"impressions": replay._imps} if replay._imps is not None else {})
    out = {name: np.empty((len(ts), m), dtype=np.float32) for name in list(logs) + ["recent_clicks"]}
    run = {name: np.zeros(m) for name in out}
    keys = {name: col_of[log[0]] for name, log in logs.items()}
    ends = {name: np.searchsorted(log[1], q_ts, side="left") for name, log in logs.items()}
    if with_creators:
        c_of = replay.creators[cols]
        known = c_of >= 0
        c_run = {name: np.zeros(replay.n_creators) for name in logs}
        c_keys = {name: replay.creators[log[0]] for name, log in logs.items()}
        for name in logs:
            out["creator_" + name] = np.empty((len(ts), m), dtype=np.float32)
    pos = dict.fromkeys(logs, 0)
    prev_t = -np.inf
    for r, (q, t) in enumerate(zip(q_order, q_ts)):
        if np.isfinite(prev_t) and np.isfinite(t):
            run["recent_clicks"] *= np.exp(-(t - prev_t) / RECENT_TAU_S)
        for name, log in logs.items():
            a, b = pos[name], int(ends[name][r])
            if b > a:
                k = keys[name][a:b]
                hit = k >= 0
                run[name] += np.bincount(k[hit], minlength=m)
                if name == "clicks" and np.isfinite(t):
                    w = np.exp(-(t - log[1][a:b][hit]) / RECENT_TAU_S)
                    run["recent_clicks"] += np.bincount(k[hit], weights=w, minlength=m)
                if with_creators:
                    ck = c_keys[name][a:b]
                    c_run[name] += np.bincount(ck[ck >= 0], minlength=replay.n_creators)
                pos[name] = b
            out[name][q] = run[name]
            if with_creators:
                out["creator_" + name][q] = np.where(known, c_run[name][np.maximum(c_of, 0)], 0.0)
        out["recent_clicks"][q] = run["recent_clicks"]
        prev_t = t
    return out
