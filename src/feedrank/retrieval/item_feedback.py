"""Learning an item's vector from its first clickers, point in time (issue #3, cold items).

    fb = FeedbackEvents.of_clicks(click_log, encode_users, history_len)   # one user vector per click
    replay = FeedbackReplay(n_items, fb)
    replay.advance(t)                 # folds in every click with ts < t (never one at or after t)
    m = replay.means(strength=5.0)    # (N, D): sum of clicker vectors / (clicks + strength)

A new item's tower vector only knows its content and metadata; the users who clicked it in
its first minutes say who it is for. The retrieval prior adds

    w_fb * u . m_i(t),    m_i(t) = sum_{clicks e on i before t} u_e / (n_i(t) + s)

to the retrieval logit: u_e is the clicker's user vector at the click (from the history
strictly before it), ``s`` shrinks an item with few clicks towards 0 (no change). It is the
same as moving the item vector towards the mean of its clickers' vectors by a weight that
grows with the click count: ``v_i' = v_i + (T w_fb) m_i``. ``w_fb`` and ``s`` are fitted with
the other prior weights on training clicks (``retrieval/prior.py``); no test data is used.

Used by `feedrank bench retrieval` only (`--served-prior two_tower_prior_feedback`): serving
does not keep these sums yet. To serve it, the live state would keep a running (N, D) sum and
an (N,) count per item (one vector add per click, the user vector the request was scored
with) and read ``m`` for the rescored candidates (docs/retrieval.md, "Left to do").
Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

FEEDBACK_STRENGTHS = (2.0, 20.0)  # shrinkage pseudo-counts tried by the fit (best likelihood wins)


@dataclass(frozen=True)
class FeedbackEvents:
    """Clicks with the clicker's user vector at click time: ``items`` (E,) int64 catalogue
    rows, ``ts`` (E,) float64 seconds, ``vecs`` (E, D) float32 user vectors."""

    items: np.ndarray
    ts: np.ndarray
    vecs: np.ndarray

    def __post_init__(self) -> None:
        if self.items.ndim != 1 or self.ts.shape != self.items.shape:
            raise ValueError(f"FeedbackEvents: items {self.items.shape} and ts {self.ts.shape} must be equal 1-d shapes")
        if self.vecs.ndim != 2 or len(self.vecs) != len(self.items):
            raise ValueError(f"FeedbackEvents: vecs {self.vecs.shape} must be (E, D) with E = {len(self.items)}")

    @classmethod
    def of_clicks(cls, log, encode_users: Callable[[np.ndarray, np.ndarray], np.ndarray], history_len: int,
                  rows: np.ndarray | None = None) -> FeedbackEvents:
        """The clicks of ``log`` (a ``ClickLog``; ``rows``: a subset of its indices) with each
        clicker's vector from ``encode_users(histories (E, L), ts (E,))``, the history being
        the user's clicks strictly before that click."""
        idx = np.arange(len(log.items)) if rows is None else np.asarray(rows, dtype=np.int64)
        users, ts = log.user_codes[idx], log.ts[idx]
        vecs = np.asarray(encode_users(log.histories(users, ts, history_len), ts), dtype=np.float32)
        return cls(log.items[idx].astype(np.int64), ts.astype(np.float64), vecs)

    def before(self, t: float) -> FeedbackEvents:
        """The events with ts < ``t``."""
        keep = self.ts < t
        return FeedbackEvents(self.items[keep], self.ts[keep], self.vecs[keep])


class FeedbackReplay:
    """Running per-item sums of clicker vectors and click counts over time.

    ``advance(t)`` folds in every event with ``ts < t``; times must not decrease."""

    def __init__(self, n_items: int, events: FeedbackEvents) -> None:
        self.n_items = int(n_items)
        if len(events.items) and (events.items.min() < 0 or events.items.max() >= self.n_items):
            raise ValueError(f"FeedbackReplay: item index outside [0, {self.n_items})")
        order = np.argsort(events.ts, kind="stable")
        self._items, self._ts, self._vecs = events.items[order], events.ts[order], events.vecs[order]
        self.sums = np.zeros((self.n_items, events.vecs.shape[1]), dtype=np.float64)
        self.counts = np.zeros(self.n_items, dtype=np.float64)
        self._pos = 0
        self.t = -np.inf

    def advance(self, t: float) -> None:
        """Fold in the events with ts < ``t``."""
        if t < self.t:
            raise ValueError(f"FeedbackReplay.advance: time went back from {self.t} to {t}")
        end = int(np.searchsorted(self._ts, t, side="left"))
        if end > self._pos:
            sl = slice(self._pos, end)
            np.add.at(self.sums, self._items[sl], self._vecs[sl])
            self.counts += np.bincount(self._items[sl], minlength=self.n_items)
            self._pos = end
        self.t = float(t)

    def means(self, strength: float, rows: np.ndarray | None = None) -> np.ndarray:
        """(N, D) (or (len(rows), D)) float32 shrunk mean clicker vectors ``sum / (count + strength)``."""
        if strength <= 0:
            raise ValueError(f"feedback strength must be > 0, got {strength}")
        s = self.sums if rows is None else self.sums[rows]
        c = self.counts if rows is None else self.counts[rows]
        return (s / (c + strength)[:, None]).astype(np.float32)


def feedback_feature(events: FeedbackEvents, n_items: int, query_ts: np.ndarray, query_vecs: np.ndarray,
                     cols: np.ndarray, strength: float) -> np.ndarray:
    """(Q, M) float32 ``u_q . m_i(t_q)`` for query users ``query_vecs`` (Q, D) at ``query_ts``
    (Q,) over items ``cols`` (M,): the feedback term's feature, point in time (clicks
    strictly before each query)."""
    query_ts = np.asarray(query_ts, dtype=np.float64)
    replay = FeedbackReplay(n_items, events)
    out = np.zeros((len(query_ts), len(cols)), dtype=np.float32)
    for q in np.argsort(query_ts, kind="stable"):
        replay.advance(float(query_ts[q]))
        out[q] = replay.means(strength, cols) @ query_vecs[q]
    return out
