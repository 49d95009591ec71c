"""Real-time features from the event stream: sliding-window item counters, smoothed CTR,
trending scores, users' recent clicks and category affinities. Bounded memory.

    rt = RealtimeFeatures(item_category={"n1": "sports", ...})
    rt.apply(events)                              # from a LogConsumer (features/consumer.py)
    rt.apply_columns(cols)                        # the same for types.EventColumns (its fast path)
    f = rt.item_features(["n1", "n2"], now=time.time())
    f.impressions, f.clicks, f.ctr                # (N, W) over windows (300, 3600, 86400) s
    f.trending                                    # (N,) log1p(clicks 1h) - log1p(clicks 24h / 24)
    f.source                                      # "stream", or "baseline" when the stream stalled
    rt.user_features("u1", now)                   # recent clicks, n_clicks, category shares

Item counters live in one ring of ``buckets`` time buckets per window, shared by all items
(``(slots, buckets)`` float32 arrays per window and kind), so applying a batch is one
vectorised ``np.add.at`` per kind, after one dict lookup per event for its item's slot.
The ring is global: moving into a new bucket clears that column for every item. Counts therefore have one bucket of resolution (25 s for 5 min,
5 min for 1 h, 2 h for 24 h). Events older than a window's ring are ignored for that
window (counted in ``stats()["late"]``).

Bounds: at most ``max_items`` item slots (the least recently active 10% are evicted when
full), ``max_users`` users (least recently updated evicted), ``history_len`` clicks and
``max_categories`` categories per user, ``dedupe_ids`` remembered event ids (an event id
seen again is skipped: at-least-once sources may redeliver).

When the stream stalls (no ``heartbeat``/``apply`` for ``stall_s`` seconds of wall time,
or none yet), ``item_features`` serves the batch baselines loaded with ``load_baseline``
(daily aggregates scaled to each window) and says so in ``source``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import orjson

from feedrank.config import FeaturesConfig
from feedrank.types import CLICK_CODE, IMPRESSION_CODE, Event, EventColumns

DEFAULT_WINDOWS: tuple[int, ...] = (300, 3600, 86400)


@dataclass(frozen=True)
class ItemRealtime:
    """Per-item real-time features; W = len(windows)."""

    windows: tuple[int, ...]
    impressions: np.ndarray  # (N, W) float64
    clicks: np.ndarray       # (N, W) float64
    ctr: np.ndarray          # (N, W) float64 smoothed: (clicks + prior*w) / (impressions + w)
    trending: np.ndarray     # (N,) float64
    source: str              # "stream" | "baseline"


@dataclass(frozen=True)
class UserRealtime:
    recent_clicks: tuple[str, ...]        # oldest first, at most history_len
    n_clicks: int
    category_affinity: dict[str, float]   # shares (sum to 1), decayed by half-life
    known: bool


def build_realtime(cfg: FeaturesConfig, item_category: Mapping[str, str] | Callable[[str], str | None] | None = None,
                   *, history_len: int = 30, prior_ctr: float = 0.05, prior_weight: float = 20.0) -> "RealtimeFeatures":
    """``RealtimeFeatures`` from the ``features`` config section (windows, bounds, stall)."""
    return RealtimeFeatures(cfg.windows_s, max_items=cfg.max_items, max_users=cfg.max_users, history_len=history_len,
                            prior_ctr=prior_ctr, prior_weight=prior_weight, item_category=item_category,
                            stall_s=cfg.stall_s)


class _User:
    __slots__ = ("clicks", "n_clicks", "aff", "aff_ts")

    def __init__(self, history_len: int) -> None:
        self.clicks: deque[str] = deque(maxlen=history_len)
        self.n_clicks = 0
        self.aff: dict[str, float] = {}
        self.aff_ts = 0.0


class RealtimeFeatures:
    """Real-time item and user features (see the module docstring). Thread-safe."""

    def __init__(
        self,
        windows: Sequence[int] = DEFAULT_WINDOWS,
        *,
        buckets: int = 12,
        max_items: int = 200_000,
        max_users: int = 200_000,
        history_len: int = 30,
        max_categories: int = 32,
        affinity_half_life_s: float = 7 * 86400.0,
        prior_ctr: float = 0.05,
        prior_weight: float = 20.0,
        item_category: Mapping[str, str] | Callable[[str], str | None] | None = None,
        dedupe_ids: int = 200_000,
        stall_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.windows = tuple(int(w) for w in windows)
        if not self.windows or min(self.windows) <= 0 or buckets < 1:
            raise ValueError("windows must be positive seconds and buckets >= 1")
        self.buckets = int(buckets)
        self.width = np.array([w / self.buckets for w in self.windows], dtype=np.float64)
        self.max_items, self.max_users = int(max_items), int(max_users)
        self.history_len, self.max_categories = int(history_len), int(max_categories)
        self.half_life = float(affinity_half_life_s)
        self.prior_ctr, self.prior_weight = float(prior_ctr), float(prior_weight)
        if item_category is None:
            self._category: Callable[[str], str | None] = lambda _i: None
        elif callable(item_category):
            self._category = item_category
        else:
            self._category = item_category.get
        self.dedupe_ids, self.stall_s, self.clock = int(dedupe_ids), float(stall_s), clock
        self._lock = threading.RLock()
        self._reset(min(1024, self.max_items))
        self._baseline: dict[str, tuple[float, float]] = {}

    def _reset(self, cap: int) -> None:
        w, b = len(self.windows), self.buckets
        self._imp = np.zeros((w, cap, b), dtype=np.float32)
        self._clk = np.zeros((w, cap, b), dtype=np.float32)
        self._epoch = np.full((w, b), -(2**62), dtype=np.int64)  # bucket number held at each ring position
        self._active = np.full(cap, -np.inf, dtype=np.float64)    # last event ts per slot
        self._slots: dict[str, int] = {}
        self._free: list[int] = list(range(cap - 1, -1, -1))
        self._users: OrderedDict[str, _User] = OrderedDict()
        self._seen_ids: dict[str, int] = {}  # id -> its number in the order remembered
        self._seen_order: deque[str] = deque()  # the newest dedupe_ids; the last is number _seen_next - 1
        self._seen_next = 0
        self._stats = {"applied": 0, "duplicates": 0, "late": 0, "evicted_items": 0, "evicted_users": 0}
        self._heartbeat = -math.inf

    # ------------------------------------------------------------------ slots
    def _grow_or_evict(self) -> None:
        cap = self._imp.shape[1]
        if cap < self.max_items:
            new = min(cap * 2, self.max_items)
            for name in ("_imp", "_clk"):  # zeros (lazily zeroed pages) + a copy of the old slots
                old = getattr(self, name)
                grown = np.zeros((old.shape[0], new, old.shape[2]), dtype=old.dtype)
                grown[:, :cap] = old
                setattr(self, name, grown)
            self._active = np.concatenate([self._active, np.full(new - cap, -np.inf)])
            self._free.extend(range(new - 1, cap - 1, -1))
            return
        n = max(1, cap // 10)
        victims = np.argpartition(self._active, n - 1)[:n]
        vset = set(victims.tolist())
        for iid in [k for k, s in self._slots.items() if s in vset]:
            del self._slots[iid]
        self._imp[:, victims, :] = 0.0
        self._clk[:, victims, :] = 0.0
        self._active[victims] = -np.inf
        self._free.extend(victims.tolist())
        self._stats["evicted_items"] += n

    # ------------------------------------------------------------------ applying events
    def apply(self, events: Iterable[Event]) -> int:
        """Count ``events`` (impressions and clicks into item windows; clicks into the
        user's history and affinities). Returns how many were new (not seen ids)."""
        return self.apply_columns(EventColumns.from_events(events))

    def apply_columns(self, cols: EventColumns) -> int:
        """``apply`` for a batch as columns (the live consumer's path): dedupe by event id,
        then item slots and window counts in a few vectorised calls; clicks (rare) also
        update their user, in batch order. Returns how many events were new."""
        with self._lock:
            new = self._dedupe(cols.event_id)
            n_new = int(new.sum())
            self._stats["duplicates"] += len(cols) - n_new
            if n_new:
                kind = cols.kind
                click = new & (kind == CLICK_CODE)
                for i in np.flatnonzero(click).tolist():
                    self._user_click(cols.user_id[i], cols.item_id[i], float(cols.ts[i]))
                rows = np.flatnonzero(click | (new & (kind == IMPRESSION_CODE)))
                if len(rows):
                    self._count([cols.item_id[i] for i in rows.tolist()], cols.ts[rows], click[rows])
            self._stats["applied"] += n_new
            self._heartbeat = self.clock()
            return n_new

    def _dedupe(self, ids: list[str]) -> np.ndarray:
        """(N,) bool: the ids not remembered at their turn (the newest ``dedupe_ids`` ids
        before them, this batch's included); remembers them."""
        seen, cap, k = self._seen_ids, self.dedupe_ids, self._seen_next
        if len(set(ids)) == len(ids) and not any(map(seen.__contains__, ids)):  # the usual case
            new = [True] * len(ids)
            seen.update(zip(ids, range(k, k + len(ids))))
            self._seen_order.extend(ids)
            k += len(ids)
        else:  # a repeat: one at a time, as the window slides
            new = []
            for e in ids:
                s = seen.get(e)
                if s is not None and s >= k - cap:
                    new.append(False)
                    continue
                new.append(True)
                seen[e] = k
                self._seen_order.append(e)
                k += 1
        self._seen_next = k
        order = self._seen_order
        while len(order) > cap:
            e = order.popleft()
            if seen.get(e) == k - len(order) - 1:  # not remembered again since
                del seen[e]
        return np.fromiter(new, dtype=bool, count=len(ids))

    def _count(self, items: list[str], ts: np.ndarray, click: np.ndarray) -> None:
        """Count impressions/clicks of ``items`` at ``ts`` into the windows. New items get
        slots in order of first appearance; when a slot must be evicted for one, the
        records before it are counted first (their slots active at their time, so the
        eviction spares them) and the rest after the eviction."""
        slots = self._slots
        pos, n = 0, len(items)
        while pos < n:
            rest = items[pos:] if pos else items
            got = list(map(slots.get, rest))
            cut = n
            if None in got:  # new items: slots in order of first appearance
                new = [i for i in dict.fromkeys(rest) if i not in slots]
                free = self._free
                if len(free) >= len(new):  # the usual case: one update
                    slots.update(zip(new, reversed(free[len(free) - len(new):])))
                    del free[len(free) - len(new):]
                else:
                    for it in new:
                        if not self._free and self._imp.shape[1] < self.max_items:
                            self._grow_or_evict()  # grows: slots already given stay valid
                        if not self._free:
                            cut = pos + rest.index(it)
                            break
                        slots[it] = self._free.pop()
                got = list(map(slots.__getitem__, rest[:cut - pos] if cut < n else rest))
            if cut > pos:
                s = np.fromiter(got[:cut - pos] if cut < n else got, dtype=np.int64, count=cut - pos)
                t = ts[pos:cut]
                np.maximum.at(self._active, s, t)  # an eviction later in the batch must spare them
                self._add(s, t, click[pos:cut])
            if cut < n:
                self._grow_or_evict()  # full: evicts the least recently active
            pos = cut

    def _add(self, slots: np.ndarray, ts: np.ndarray, click: np.ndarray) -> None:
        cap, b = self._imp.shape[1], self.buckets
        flat: list[np.ndarray] = []  # into (windows, slots, buckets) raveled: one add.at per kind
        flat_click: list[np.ndarray] = []
        for w in range(len(self.windows)):
            g = np.floor(ts / self.width[w]).astype(np.int64)
            newest = max(int(self._epoch[w].max()), int(g.max()))
            keep = g > newest - b  # older than the ring: late for this window
            for gb in np.unique(g[keep]).tolist():  # ascending: a newer bucket on the same ring position wins
                pos = gb % b
                held = self._epoch[w, pos]
                if held < gb:
                    self._imp[w, :, pos] = 0.0
                    self._clk[w, :, pos] = 0.0
                    self._epoch[w, pos] = gb
                elif held > gb:
                    keep &= g != gb
            if w == 0 and not keep.all():  # counted once, for the shortest window
                self._stats["late"] += int((~keep).sum())
            idx = (w * cap + slots) * b + g % b
            flat.append(idx[keep])
            flat_click.append(idx[keep & click])
        np.add.at(self._imp.reshape(-1), np.concatenate(flat), 1.0)
        clicked = np.concatenate(flat_click)
        if len(clicked):
            np.add.at(self._clk.reshape(-1), clicked, 1.0)

    def _user_click(self, user_id: str, item_id: str, ts: float) -> None:
        u = self._users.get(user_id)
        if u is None:
            u = self._users[user_id] = _User(self.history_len)
            if len(self._users) > self.max_users:
                self._users.popitem(last=False)
                self._stats["evicted_users"] += 1
        else:
            self._users.move_to_end(user_id)
        u.clicks.append(item_id)
        u.n_clicks += 1
        cat = self._category(item_id)
        if cat is not None:
            self._decay(u, ts)
            u.aff[cat] = u.aff.get(cat, 0.0) + 1.0
            if len(u.aff) > self.max_categories:
                del u.aff[min(u.aff, key=u.aff.__getitem__)]

    def _decay(self, u: _User, ts: float) -> None:
        if ts > u.aff_ts:
            if u.aff and self.half_life > 0:
                f = 0.5 ** ((ts - u.aff_ts) / self.half_life)
                for k in u.aff:
                    u.aff[k] *= f
            u.aff_ts = ts

    def heartbeat(self, now_wall: float | None = None) -> None:
        """The consumer is alive and caught up (called after every successful poll)."""
        with self._lock:
            self._heartbeat = self.clock() if now_wall is None else now_wall

    def stalled(self, now_wall: float | None = None) -> bool:
        now_wall = self.clock() if now_wall is None else now_wall
        return now_wall - self._heartbeat > self.stall_s

    # ------------------------------------------------------------------ reading
    def counts(self, item_ids: Sequence[str], now: float) -> tuple[np.ndarray, np.ndarray]:
        """Streamed (impressions, clicks), each (N, W) float64, over ``(now - window, now]``."""
        n, nw = len(item_ids), len(self.windows)
        imps, clks = np.zeros((n, nw)), np.zeros((n, nw))
        get = self._slots.get
        with self._lock:
            idx = np.fromiter((-1 if s is None else s for s in map(get, map(str, item_ids))), dtype=np.int64, count=n)
            have = idx >= 0
            rows = idx[have]
            gnow = np.floor(now / self.width).astype(np.int64)[:, None]
            live = ((self._epoch > gnow - self.buckets) & (self._epoch <= gnow)).astype(np.float32)  # (W, B)
            # (W, n, B) x (W, B) -> (W, n): sums over the live buckets of each window
            imps[have] = np.einsum("wnb,wb->nw", self._imp[:, rows, :], live)
            clks[have] = np.einsum("wnb,wb->nw", self._clk[:, rows, :], live)
        return imps, clks

    def item_features(self, item_ids: Sequence[str], now: float, now_wall: float | None = None) -> ItemRealtime:
        """Counters, smoothed CTR and trending for ``item_ids``; batch baselines when stalled."""
        if self.stalled(now_wall) and self._baseline:
            per_day = np.array([self._baseline.get(str(i), (0.0, 0.0)) for i in item_ids], dtype=np.float64)
            scale = np.asarray(self.windows, dtype=np.float64)[None, :] / 86400.0
            imps = per_day[:, :1] * scale if len(item_ids) else np.zeros((0, len(self.windows)))
            clks = per_day[:, 1:2] * scale if len(item_ids) else np.zeros((0, len(self.windows)))
            source = "baseline"
        else:
            imps, clks = self.counts(item_ids, now)
            source = "stream"
        ctr = (clks + self.prior_ctr * self.prior_weight) / (imps + self.prior_weight)
        return ItemRealtime(self.windows, imps, clks, ctr, self.trending(clks), source)

    def trending(self, clicks: np.ndarray) -> np.ndarray:
        """(N,) log1p(clicks in the middle window) - log1p(clicks in the longest window
        scaled to the middle one): > 0 when an item is hotter now than over the long run."""
        mid = 1 if len(self.windows) > 2 else 0
        long = len(self.windows) - 1
        ratio = self.windows[mid] / self.windows[long]
        return np.log1p(clicks[:, mid]) - np.log1p(clicks[:, long] * ratio)

    def user_features(self, user_id: str, now: float) -> UserRealtime:
        with self._lock:
            u = self._users.get(user_id)
            if u is None:
                return UserRealtime((), 0, {}, False)
            f = 0.5 ** (max(0.0, now - u.aff_ts) / self.half_life) if self.half_life > 0 else 1.0
            total = sum(u.aff.values()) * f
            aff = {k: v * f / total for k, v in u.aff.items()} if total > 0 else {}
            return UserRealtime(tuple(u.clicks), u.n_clicks, aff, True)

    def load_baseline(self, item_ids: Sequence[str], impressions_per_day: Sequence[float],
                      clicks_per_day: Sequence[float]) -> None:
        """Batch baselines (daily aggregates, e.g. from ``offline.daily_item_aggregates``)."""
        with self._lock:
            self._baseline = {str(i): (float(a), float(b)) for i, a, b in zip(item_ids, impressions_per_day, clicks_per_day)}

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._stats, "items": len(self._slots), "users": len(self._users), "item_capacity": self._imp.shape[1]}

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume exactly (arrays; strings as JSON bytes)."""
        with self._lock:
            users = {k: [list(u.clicks), u.n_clicks, u.aff, u.aff_ts] for k, u in self._users.items()}
            meta = {"windows": list(self.windows), "buckets": self.buckets, "slots": self._slots, "users": users,
                    "seen": list(self._seen_order), "stats": self._stats}
            return {"imp": self._imp.copy(), "clk": self._clk.copy(), "epoch": self._epoch.copy(),
                    "active": self._active.copy(), "meta": np.frombuffer(orjson.dumps(meta), dtype=np.uint8)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        meta = orjson.loads(bytes(np.asarray(state["meta"], dtype=np.uint8)))
        if tuple(meta["windows"]) != self.windows or meta["buckets"] != self.buckets:
            raise ValueError(f"checkpoint has windows {meta['windows']} x {meta['buckets']} buckets, "
                             f"these features use {list(self.windows)} x {self.buckets}")
        with self._lock:
            self._imp, self._clk = np.array(state["imp"]), np.array(state["clk"])
            self._epoch, self._active = np.array(state["epoch"]), np.array(state["active"])
            self._slots = {str(k): int(v) for k, v in meta["slots"].items()}
            used = set(self._slots.values())
            self._free = [s for s in range(self._imp.shape[1] - 1, -1, -1) if s not in used]
            self._users = OrderedDict()
            for k, (clicks, n, aff, aff_ts) in meta["users"].items():
                u = _User(self.history_len)
                u.clicks.extend(clicks)
                u.n_clicks, u.aff, u.aff_ts = int(n), {c: float(v) for c, v in aff.items()}, float(aff_ts)
                self._users[k] = u
            self._seen_order = deque(meta["seen"])
            self._seen_ids = {e: i for i, e in enumerate(self._seen_order)}
            self._seen_next = len(self._seen_order)
            self._stats = {k: int(v) for k, v in meta["stats"].items()}
