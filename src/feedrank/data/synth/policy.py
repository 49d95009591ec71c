"""The synthetic world's logging policy: stochastic feeds with exact, logged propensities.

A feed for user u at time t holds ``min(feed_len, n_live)`` distinct items drawn from the
items *live* at t (published, ``0 <= age < max_age``). Each draw comes from the mixture

    p_t(j) = eps_u   / n_live                                     uniform exploration
           + eps_pop * w_j / W                                    popularity
           + eps_cat * q_u(cat_j) * w_j / W_{cat_j}               in-category popularity

where w_j = 1 + (recent clicks on j, exponentially decayed with ``policy_pop_half_life_days``),
W and W_c are the sums of w over the live items (of category c), and q_u is the user's
click-category histogram (decayed, plus ``policy_cat_smoothing``) restricted to categories
that have live items and normalised. Both w and q are refreshed once a day from the logs of
previous days (the policy only uses logged data, never the ground truth).

Slots are filled in order by drawing from p_t and rejecting items already in the feed
(sampling without replacement, Plackett-Luce). The logged propensity of the item j at slot
k is the policy's probability of putting j at slot k given the items at slots 0..k-1:

    propensity(j, k) = p_t(j) / (1 - sum_{k' < k} p_t(j_k'))         in (0, 1]

so the product of a feed's propensities is the probability of the whole ordered feed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feedrank.data.synth.world import DAY_S, World

_CAT_SHIFT = 42  # key = cat << 42 | time_ms (2**42 ms ~ 139 years)


@dataclass
class Feeds:
    """Feeds for a batch of sessions, flattened slot by slot (session-major, position-minor).

    Arrays (F = total slots): ``session`` (F,) int64 index into the batch, ``position``
    (F,) int32 0-based slot, ``item`` (F,) int64, ``propensity`` (F,) float64 in (0, 1].
    """

    session: np.ndarray
    position: np.ndarray
    item: np.ndarray
    propensity: np.ndarray


class LoggingPolicy:
    """The mixture policy above, with its daily-refreshed state (popularity, user histograms)."""

    def __init__(self, world: World) -> None:
        cfg = world.config
        self.world = world
        self.cfg = cfg
        self.origin_ms = int(round((cfg.start - cfg.max_age_s - DAY_S) * 1000.0))
        self.max_age_ms = int(round(cfg.max_age_s * 1000.0))
        self.pub_rel = np.round(world.item_pub * 1000.0).astype(np.int64) - self.origin_ms
        cats = world.item_cat.astype(np.int64)
        self.cat_order = np.argsort(cats, kind="stable")  # (cat, publish time) order
        self.cat_key = (cats[self.cat_order] << _CAT_SHIFT) | self.pub_rel[self.cat_order]
        self.n_cat = cfg.n_categories
        self.clicks = np.zeros(cfg.n_items, dtype=np.float64)  # decayed item clicks
        self.hist = np.zeros((cfg.n_users, cfg.n_categories), dtype=np.float32)  # decayed user clicks per category
        self._today_items = np.zeros(cfg.n_items, dtype=np.float64)
        self._today_hist = np.zeros(cfg.n_users * cfg.n_categories, dtype=np.float64)
        self.decay = 0.5 ** (1.0 / cfg.policy_pop_half_life_days)
        self.refresh()

    # ------------------------------------------------------------------ state
    def refresh(self) -> None:
        """Recompute the popularity weights and their cumulative sums (start of a day)."""
        self.w = 1.0 + self.clicks
        self.cum_w = np.concatenate([[0.0], np.cumsum(self.w)])
        self.cum_wc = np.concatenate([[0.0], np.cumsum(self.w[self.cat_order])])

    def observe_clicks(self, users: np.ndarray, items: np.ndarray) -> None:
        """Record logged clicks of the current day (used from the next day on)."""
        self._today_items += np.bincount(items, minlength=self.cfg.n_items)
        key = users.astype(np.int64) * self.n_cat + self.world.item_cat[items]
        self._today_hist += np.bincount(key, minlength=len(self._today_hist))

    def end_day(self) -> None:
        """Fold the day's clicks into the decayed state and refresh."""
        self.clicks = self.clicks * self.decay + self._today_items
        self.hist *= np.float32(self.decay)
        self.hist += self._today_hist.reshape(self.hist.shape).astype(np.float32)
        self._today_items[:] = 0.0
        self._today_hist[:] = 0.0
        self.refresh()

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator, users: np.ndarray, t_ms: np.ndarray) -> Feeds:
        """Feeds for sessions (``users`` (S,) int, ``t_ms`` (S,) int64 epoch ms).

        Sessions with no live item get an empty feed (no slots).
        """
        cfg = self.cfg
        S = len(users)
        t_rel = t_ms.astype(np.int64) - self.origin_ms
        lo = np.searchsorted(self.pub_rel, t_rel - self.max_age_ms, side="right")
        hi = np.searchsorted(self.pub_rel, t_rel, side="right")
        n_live = hi - lo
        W = self.cum_w[hi] - self.cum_w[lo]
        cshift = np.arange(self.n_cat, dtype=np.int64)[None, :] << _CAT_SHIFT
        lo_c = np.searchsorted(self.cat_key, cshift + (t_rel - self.max_age_ms)[:, None], side="right")
        hi_c = np.searchsorted(self.cat_key, cshift + t_rel[:, None], side="right")
        Wc = self.cum_wc[hi_c] - self.cum_wc[lo_c]  # (S, C)
        q = (self.hist[users].astype(np.float64) + cfg.policy_cat_smoothing) * (hi_c > lo_c)
        qs = q.sum(axis=1, keepdims=True)
        q = np.divide(q, qs, out=np.zeros_like(q), where=qs > 0)
        L = np.minimum(cfg.feed_len, n_live)
        state = (lo, hi, n_live, W, lo_c, hi_c, Wc, q)

        m = 2 * cfg.feed_len
        draws = self._draw(rng, np.arange(S), m, state)
        for _ in range(10):
            keep = _first_occurrence(draws)
            short = keep.sum(axis=1) < L
            if not short.any():
                break
            extra = np.full((S, m), -1, dtype=np.int64)
            extra[short] = self._draw(rng, np.flatnonzero(short), m, state)
            draws = np.concatenate([draws, extra], axis=1)
        keep = _first_occurrence(draws)
        rank = np.cumsum(keep, axis=1) - 1
        sel = keep & (rank < L[:, None])
        sess = np.nonzero(sel)[0]
        pos = rank[sel].astype(np.int32)
        item = draws[sel]

        p = self.draw_probability(sess, item, state)
        dense = np.zeros((S, cfg.feed_len))
        dense[sess, pos] = p
        prev = (np.cumsum(dense, axis=1) - dense)[sess, pos]  # mass of the earlier slots
        prop = np.clip(p / np.maximum(1.0 - prev, 1e-300), 1e-12, 1.0)
        return Feeds(session=sess, position=pos, item=item, propensity=prop)

    def draw_probability(self, sess: np.ndarray, item: np.ndarray, state: tuple) -> np.ndarray:
        """p_t(j) of one draw for (session, item) pairs. Returns: (n,) float64."""
        lo, hi, n_live, W, lo_c, hi_c, Wc, q = state
        cfg = self.cfg
        c = self.world.item_cat[item].astype(np.int64)
        wj = self.w[item]
        wc = Wc[sess, c]
        p = cfg.policy_uniform / n_live[sess] + cfg.policy_popular * wj / W[sess]
        p += cfg.policy_category * q[sess, c] * np.divide(wj, wc, out=np.zeros_like(wj), where=wc > 0)
        return p

    def _draw(self, rng: np.random.Generator, rows: np.ndarray, m: int, state: tuple) -> np.ndarray:
        """``m`` i.i.d. draws from p_t for each session in ``rows``. Returns: (R, m) int64 items (-1: none live)."""
        lo, hi, n_live, W, lo_c, hi_c, Wc, q = (a[rows] for a in state)
        cfg = self.cfg
        R = len(rows)
        comp = rng.random((R, m))
        u = rng.random((R, m))
        cu = rng.random((R, m))
        out = np.full((R, m), -1, dtype=np.int64)
        r_idx = np.broadcast_to(np.arange(R)[:, None], (R, m))
        live = (n_live > 0)[:, None]

        uni = (comp < cfg.policy_uniform) & live
        r = r_idx[uni]
        out[uni] = lo[r] + np.minimum((u[uni] * n_live[r]).astype(np.int64), n_live[r] - 1)

        pop = (comp >= cfg.policy_uniform) & (comp < cfg.policy_uniform + cfg.policy_popular) & live
        r = r_idx[pop]
        target = self.cum_w[lo[r]] + u[pop] * W[r]
        j = np.searchsorted(self.cum_w, target, side="right") - 1
        out[pop] = np.clip(j, lo[r], hi[r] - 1)

        cat = (comp >= cfg.policy_uniform + cfg.policy_popular) & live
        r = r_idx[cat]
        cq = np.cumsum(q[r], axis=1)
        x = cu[cat] * cq[:, -1]
        c = np.minimum((cq <= x[:, None]).sum(axis=1), self.n_cat - 1)
        lc, hc = lo_c[r, c], hi_c[r, c]
        target = self.cum_wc[lc] + u[cat] * Wc[r, c]
        j = np.clip(np.searchsorted(self.cum_wc, target, side="right") - 1, lc, hc - 1)
        out[cat] = self.cat_order[j]
        return out


def _first_occurrence(draws: np.ndarray) -> np.ndarray:
    """(R, M) bool: True where draws[r, k] >= 0 and is its row's first occurrence."""
    order = np.argsort(draws, axis=1, kind="stable")
    srt = np.take_along_axis(draws, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    first = np.empty_like(dup_sorted)
    np.put_along_axis(first, order, ~dup_sorted, axis=1)
    return first & (draws >= 0)
