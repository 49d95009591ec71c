"""The live-feature plumbing under ``features.live.LiveFeatures``: records and helpers,
store reads under a time budget (``ReadGuard``), the consumer's sink that publishes into the
online store (``StorePublisher``), batch baselines and validation ranges. See
``features/live.py`` for how they fit together."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.validation import FeatureSpec
from feedrank.types import CLICK_CODE, IMPRESSION_CODE, Event, EventColumns

log = logging.getLogger("feedrank.features.live")


STREAM_KEY = "__stream__"
STATUSES = ("live", "baseline", "default")
BASE_FIELDS = ("base_imps_day", "base_clicks_day")
HASH_BITS = 48


def item_hash(item_id: str) -> float:
    """A 48-bit hash of an item id as a float64 (exact: < 2**53)."""
    return float(int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=6).digest(), "big"))


def worst(*statuses: str) -> str:
    """The most degraded of ``statuses`` (order: live < baseline < default)."""
    return max(statuses, key=STATUSES.index) if statuses else "live"


def window_fields(windows: Sequence[int]) -> tuple[str, ...]:
    """The item record fields the publisher writes: imps_<w>, clicks_<w> per window, trending."""
    return tuple(f"{kind}_{w}" for w in windows for kind in ("imps", "clicks")) + ("trending",)


@dataclass(frozen=True)
class LiveItems:
    """Validated live counts for N items over the longest window (for the ranker)."""

    impressions: np.ndarray  # (N,) float64, longest window (or baseline scaled to it)
    clicks: np.ndarray       # (N,) float64
    trending: np.ndarray     # (N,) float64
    status: str              # live | baseline | default
    replaced: int            # stored values replaced by validation


@dataclass(frozen=True)
class LiveUser:
    n_clicks: int
    recent_hashes: tuple[float, ...]        # oldest first (item_hash of each clicked item)
    category_affinity: dict[str, float]


# ---------------------------------------------------------------------- reads under a budget


class ReadGuard:
    """Runs store calls with a time budget; a breaker skips the store after failures.

    ``call(fn, *args)`` returns ``(result, outcome)``: outcome ``ok`` with the result, or
    ``timeout`` / ``error`` / ``open`` (breaker open or every worker busy) with None."""

    def __init__(self, timeout_s: float, workers: int = 4, cooloff_s: float = 0.25, inline: bool = False) -> None:
        self.timeout_s = float(timeout_s)
        self.cooloff_s = float(cooloff_s)
        self.inline = inline
        self.workers = int(workers)
        self._pool: ThreadPoolExecutor | None = None  # created on first use (again after close)
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._probing = False
        self.outcomes = {"ok": 0, "timeout": 0, "error": 0, "open": 0}

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _fail(self) -> None:
        with self._lock:
            self._open_until = time.monotonic() + self.cooloff_s
            self._probing = False

    def call(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
        with self._lock:
            t = time.monotonic()
            if t < self._open_until or (self._probing and self._open_until > 0):
                self.outcomes["open"] += 1
                return None, "open"
            probe = self._open_until > 0  # first call after a cool-off: the only one let through
            if probe:
                self._probing = True
        if self.inline:
            try:
                out = fn(*args)
            except Exception as exc:
                return self._error(exc)
            self._ok()
            return out, "ok"
        if not self._slots.acquire(blocking=False):  # every worker stuck on a slow store
            self._fail()
            self._count("open")
            return None, "open"
        try:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="store-read")
                pool = self._pool
            fut = pool.submit(fn, *args)
        except RuntimeError:  # pool shut down
            self._slots.release()
            self._count("error")
            return None, "error"
        fut.add_done_callback(lambda _f: self._slots.release())
        try:
            out = fut.result(timeout=self.timeout_s)
        except FutureTimeout:
            self._fail()
            self._count("timeout")
            return None, "timeout"
        except Exception as exc:
            return self._error(exc)
        self._ok()
        return out, "ok"

    def _error(self, exc: Exception) -> tuple[None, str]:
        self._fail()
        self._count("error")
        log.warning("feature store read failed: %s: %s", type(exc).__name__, exc)
        return None, "error"

    def _ok(self) -> None:
        with self._lock:
            self.outcomes["ok"] += 1
            self._open_until = 0.0
            self._probing = False

    def close(self) -> None:
        """Stop the reader threads (a later call starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------- the consumer's sink


class StorePublisher:
    """A ``LogConsumer`` sink: ``RealtimeFeatures`` plus publishing into the online store.

    ``base_user(user_id) -> (n_clicks, [item ids])`` gives a user's state from the model's
    training snapshot, so published click counts and histories continue it."""

    def __init__(self, rt: RealtimeFeatures, store, history_len: int,
                 base_user: Callable[[str], tuple[int, list[str]]] | None = None,
                 heartbeat_every_s: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self.rt, self.store, self.history_len = rt, store, int(history_len)
        self.base_user = base_user or (lambda _u: (0, []))
        self.heartbeat_every_s = float(heartbeat_every_s)
        self.clock = clock
        self.stream_now = -np.inf   # newest event time applied (the windows' "now")
        self.published = 0
        self.publish_errors = 0
        self._last_beat = -np.inf
        self._fields = window_fields(rt.windows)
        self.on_publish: Callable[[list[str]], None] | None = None  # called with the item ids just written

    def apply(self, events: Iterable[Event]) -> int:
        return self.apply_columns(EventColumns.from_events(events))

    def apply_columns(self, cols: EventColumns) -> int:
        """Apply a batch to the real-time state, then publish every item it has an
        impression or click of (repeats included) and every clicking user."""
        n = self.rt.apply_columns(cols)
        kind = cols.kind
        click = kind == CLICK_CODE
        touched = np.flatnonzero(click | (kind == IMPRESSION_CODE))
        if len(touched):
            self.stream_now = float(max(self.stream_now, float(cols.ts[touched].max())))
            items = list(dict.fromkeys(map(cols.item_id.__getitem__, touched.tolist())))
            users = list(dict.fromkeys(map(cols.user_id.__getitem__, np.flatnonzero(click).tolist())))
            self._publish(items, users)
        return n

    def _now(self) -> float:
        return self.stream_now if np.isfinite(self.stream_now) else self.clock()

    def item_table(self, item_ids: Sequence[str]) -> np.ndarray:
        """(N, 2W + 1) float64: ``item_ids``' record fields (``window_fields`` order) at the
        stream time."""
        imps, clks = self.rt.counts(item_ids, self._now())
        table = np.empty((len(item_ids), len(self._fields)))
        table[:, 0:-1:2], table[:, 1:-1:2], table[:, -1] = imps, clks, self.rt.trending(clks)
        return table

    def user_records(self, user_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """The user records of ``user_ids`` at the stream time."""
        now = self._now()
        users: dict[str, dict[str, float]] = {}
        for uid in user_ids:
            uf = self.rt.user_features(uid, now)
            base_n, base_hist = self.base_user(uid)
            hist = (list(base_hist) + list(uf.recent_clicks))[-self.history_len:]
            rec = {"n_clicks": float(base_n + uf.n_clicks)}
            rec.update({f"c{k}": item_hash(iid) for k, iid in enumerate(hist)})
            rec.update({f"aff:{c}": float(v) for c, v in uf.category_affinity.items()})
            users[uid] = rec
        return users

    def records(self, item_ids: Sequence[str], user_ids: Sequence[str]) -> tuple[dict, dict]:
        """The item and user records for ``item_ids`` / ``user_ids`` at the stream time."""
        rows: dict[str, dict[str, float]] = {}
        if item_ids:
            fields = self._fields
            for iid, vals in zip(item_ids, self.item_table(item_ids).tolist()):
                rows[iid] = dict(zip(fields, vals))
        return rows, self.user_records(user_ids)

    def _publish(self, item_ids: list[str], user_ids: list[str]) -> None:
        put_table = getattr(self.store, "put_item_table", None)
        if put_table is not None:  # one write, no dict per item where the store can
            table = self.item_table(item_ids) if item_ids else np.zeros((0, len(self._fields)))
            users = self.user_records(user_ids)
        else:
            rows, users = self.records(item_ids, user_ids)
        wall = self.clock()
        beat = {STREAM_KEY: {"heartbeat": wall, "stream_now": float(self.stream_now)}}
        try:
            if put_table is not None:
                put_table(item_ids, self._fields, table, ts=wall, extra=beat)
            else:
                rows.update(beat)
                self.store.put_items(rows, ts=wall)
            for uid, rec in users.items():
                self.store.put_user(uid, rec, ts=wall)
            self.published += len(item_ids)
            self._last_beat = wall
            if self.on_publish is not None:  # readers' caches of these items are out of date now
                self.on_publish(item_ids)
        except Exception as exc:  # the store is down: counters keep going; republished on the next events
            self.publish_errors += 1
            log.warning("publishing real-time features failed: %s: %s", type(exc).__name__, exc)
            raise

    def heartbeat(self, now_wall: float | None = None) -> None:
        self.rt.heartbeat(now_wall)
        wall = self.clock() if now_wall is None else now_wall
        if wall - self._last_beat >= self.heartbeat_every_s:
            try:
                self.store.put_items({STREAM_KEY: {"heartbeat": wall, "stream_now": float(self.stream_now)}}, ts=wall)
                self._last_beat = wall
            except Exception as exc:
                self.publish_errors += 1
                log.debug("heartbeat to the feature store failed: %s", exc)

    def republish(self) -> int:
        """Publish every item and user the real-time state holds (after a restore, or into
        a fresh store). Returns how many item records were written."""
        with self.rt._lock:
            items = list(self.rt._slots)
            users = list(self.rt._users)
        for k in range(0, max(len(items), len(users)), 1000):
            self._publish(items[k:k + 1000], users[k:k + 1000])
        return len(items)

    def state_dict(self) -> Mapping[str, np.ndarray]:
        state = dict(self.rt.state_dict())
        state["stream_now"] = np.asarray([self.stream_now], dtype=np.float64)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.rt.load_state_dict(state)
        if "stream_now" in state:
            self.stream_now = float(np.asarray(state["stream_now"])[0])


# ---------------------------------------------------------------------- batch baselines


def write_baselines(store, item_ids: Sequence[str], imps_per_day: Sequence[float], clicks_per_day: Sequence[float],
                    ts: float) -> int:
    """Batch baselines into the items' store records (``base_imps_day``, ``base_clicks_day``),
    5000 items per write. Returns how many items were written."""
    rows = [(str(i), {"base_imps_day": float(a), "base_clicks_day": float(b)})
            for i, a, b in zip(item_ids, imps_per_day, clicks_per_day)]
    for k in range(0, len(rows), 5000):
        store.put_items(dict(rows[k:k + 5000]), ts=ts)
    return len(rows)


def baselines_from_daily(daily, days: int = 7) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    """Mean impressions and clicks per day of each item over the newest ``days`` days of a
    daily-aggregate table (``offline.daily_item_aggregates``: item_id, date, ts,
    impressions, clicks). Returns (item ids, imps/day, clicks/day, ts of the newest day)."""
    if daily.empty:
        return [], np.zeros(0), np.zeros(0), 0.0
    dates = sorted(daily["date"].unique())[-int(days):]
    recent = daily[daily["date"].isin(dates)]
    agg = recent.groupby("item_id")[["impressions", "clicks"]].sum() / float(len(dates))
    return (agg.index.astype(str).tolist(), agg["impressions"].to_numpy(dtype=np.float64),
            agg["clicks"].to_numpy(dtype=np.float64), float(recent["ts"].max()))


# ---------------------------------------------------------------------- specs from training


def live_specs(item_impressions: np.ndarray, item_clicks: np.ndarray, user_clicks: np.ndarray,
               windows: Sequence[int], margin: float = 10.0) -> dict[str, FeatureSpec]:
    """Valid ranges of the live features, learned from a model's training snapshot.

    Counts are never negative; their upper bound is the largest cumulative count seen in
    training, widened by ``margin`` x (counts grow after training). Defaults are 0 (no
    live signal: the in-process counters stand)."""
    imp_hi = float(np.max(item_impressions, initial=0.0))
    clk_hi = float(np.max(item_clicks, initial=0.0))
    usr_hi = float(np.max(user_clicks, initial=0.0))
    imp_hi, clk_hi, usr_hi = ((1.0 + margin) * max(x, 100.0) for x in (imp_hi, clk_hi, usr_hi))
    specs = {"trending": FeatureSpec("trending", -np.log1p(clk_hi), np.log1p(clk_hi), 0.0),
             "n_clicks": FeatureSpec("n_clicks", 0.0, usr_hi, 0.0),
             "base_imps_day": FeatureSpec("base_imps_day", 0.0, imp_hi, 0.0),
             "base_clicks_day": FeatureSpec("base_clicks_day", 0.0, clk_hi, 0.0)}
    for w in windows:
        specs[f"imps_{w}"] = FeatureSpec(f"imps_{w}", 0.0, imp_hi, 0.0)
        specs[f"clicks_{w}"] = FeatureSpec(f"clicks_{w}", 0.0, clk_hi, 0.0)
    return specs
