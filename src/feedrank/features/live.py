"""Real-time features in the serving path: event log -> consumer -> online store -> request.

    live = LiveFeatures(open_store(cfg.store_url), rt, cfg)        # one per process
    live.bind(snapshot, catalog_item_ids, catalog_categories)       # the model being served
    live.start(event_log, checkpoint)                               # consumer thread
    user = live.read_user("u1", now)      # LiveUser | None, status   (one round trip)
    items = live.read_items(ids, now)     # LiveItems: counts (N, 2), trending (N,), status
    live.hot_items(now, k)                # item ids clicked most in the middle window
    live.stop()                           # before the event log closes

Writer side: ``StorePublisher`` is the consumer's sink. It applies each batch to
``RealtimeFeatures`` and publishes, in one ``put_items`` and one ``put_user`` per clicking
user, the touched items' windowed counts and trending score and the users' click counts,
recent clicks and category shares. Recent clicks are stored as 48-bit hashes of item ids
(exact in float64), so records stay ``{name: float}`` and survive a model swap. A
heartbeat record (item ``__stream__``) says when the consumer last made progress.

Reader side: every read runs under ``ReadGuard``: a time budget per call
(``features.read_timeout_ms``), a small thread pool, and a breaker that skips the store
for ``cooloff_s`` after a failure and then lets one probe through. A slow, dead or broken
store therefore means defaults (the in-process counters) and ``status == "default"``,
never an error. Values are validated (``validation.FeatureValidator``) against ranges
learned from the model's training snapshot; a bad value is replaced by its fallback,
counted per feature and reason, and logged with its key. When the heartbeat is older than
``stall_s`` the batch baselines (daily aggregates loaded into the same records as
``base_imps_day``/``base_clicks_day``) are served instead, ``status == "baseline"``.

Statuses, best to worst: ``live``, ``baseline``, ``default``.
"""

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
from feedrank.features.validation import FeatureSpec, FeatureValidator
from feedrank.types import Event, EventKind

log = logging.getLogger(__name__)

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

    def apply(self, events: Iterable[Event]) -> int:
        events = list(events)
        n = self.rt.apply(events)
        items: dict[str, None] = {}
        users: dict[str, None] = {}
        for ev in events:
            if ev.kind is EventKind.IMPRESSION or ev.kind is EventKind.CLICK:
                items[ev.item_id] = None
                if ev.ts > self.stream_now:
                    self.stream_now = float(ev.ts)
            if ev.kind is EventKind.CLICK:
                users[ev.user_id] = None
        if items or users:
            self._publish(list(items), list(users))
        return n

    def records(self, item_ids: Sequence[str], user_ids: Sequence[str]) -> tuple[dict, dict]:
        """The item and user records for ``item_ids`` / ``user_ids`` at the stream time."""
        now = self.stream_now if np.isfinite(self.stream_now) else self.clock()
        rows: dict[str, dict[str, float]] = {}
        if item_ids:
            imps, clks = self.rt.counts(item_ids, now)
            trend = self.rt.trending(clks)
            for i, iid in enumerate(item_ids):
                rec = {}
                for w in range(len(self.rt.windows)):
                    rec[self._fields[2 * w]] = float(imps[i, w])
                    rec[self._fields[2 * w + 1]] = float(clks[i, w])
                rec["trending"] = float(trend[i])
                rows[iid] = rec
        users: dict[str, dict[str, float]] = {}
        for uid in user_ids:
            uf = self.rt.user_features(uid, now)
            base_n, base_hist = self.base_user(uid)
            hist = (list(base_hist) + list(uf.recent_clicks))[-self.history_len:]
            rec = {"n_clicks": float(base_n + uf.n_clicks)}
            rec.update({f"c{k}": item_hash(iid) for k, iid in enumerate(hist)})
            rec.update({f"aff:{c}": float(v) for c, v in uf.category_affinity.items()})
            users[uid] = rec
        return rows, users

    def _publish(self, item_ids: list[str], user_ids: list[str]) -> None:
        rows, users = self.records(item_ids, user_ids)
        wall = self.clock()
        rows[STREAM_KEY] = {"heartbeat": wall, "stream_now": float(self.stream_now)}
        try:
            self.store.put_items(rows, ts=wall)
            for uid, rec in users.items():
                self.store.put_user(uid, rec, ts=wall)
            self.published += len(rows) - 1
            self._last_beat = wall
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


class CatalogBinding:
    """One model's catalogue as seen by live reads: item hash -> catalogue row."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.hash_rows = {item_hash(i): r for r, i in enumerate(ids)}
        self._lock = threading.Lock()

    def extend(self, item_ids: Sequence[str]) -> None:
        with self._lock:
            for iid in item_ids:
                self.hash_rows[item_hash(str(iid))] = len(self.ids)
                self.ids.append(str(iid))

    def rows(self, hashes: Sequence[float]) -> list[int]:
        """Catalogue rows of ``hashes`` (unknown items dropped), in order."""
        return [self.hash_rows[h] for h in hashes if h in self.hash_rows]


# ---------------------------------------------------------------------- the process-level object


class LiveFeatures:
    """Store + real-time state + consumer + guarded, validated reads (module docstring)."""

    def __init__(self, store, rt: RealtimeFeatures, *, history_len: int = 30, read_timeout_s: float = 0.05,
                 stall_s: float = 60.0, ttl_s: float = 7 * 86400.0, poll_s: float = 0.1, commit_every_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.rt = store, rt
        self.history_len = int(history_len)
        self.stall_s, self.ttl_s, self.poll_s, self.commit_every_s = float(stall_s), float(ttl_s), float(poll_s), float(commit_every_s)
        self.clock = clock
        inline = type(store).__name__ == "MemoryStore"  # in-process dicts cannot be slow or down
        self.guard = ReadGuard(read_timeout_s, inline=inline)
        self.windows = tuple(rt.windows)
        wl = max(self.windows)
        self._item_names = (f"imps_{wl}", f"clicks_{wl}", *BASE_FIELDS)
        self._beat = (-np.inf, -np.inf)   # (heartbeat read, when it was read: monotonic)
        self.heartbeat_check_s = 0.25
        self.validator = FeatureValidator(live_specs(np.zeros(1), np.zeros(1), np.zeros(1), self.windows), ttl_s=ttl_s)
        self._users_base: dict[str, tuple[int, np.ndarray]] = {}
        self._base_ids: list[str] = []
        self._item_cat: dict[str, str] = {}
        self.publisher = StorePublisher(rt, store, self.history_len, base_user=self._base_user, clock=clock)
        self.consumer = None
        self.served = {s: 0 for s in STATUSES}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ binding to a model
    def bind(self, snapshot, item_ids: Sequence[str], categories: Sequence[str]) -> "CatalogBinding":
        """Use this model's catalogue (categories for affinities) and training snapshot (user
        bases, validation ranges) from now on; returns the model's own ``CatalogBinding``
        (item hash -> row), which its reads use. Called for every model loaded (hot swaps,
        A/B arms), so the newest model's ranges and user bases apply to the consumer."""
        binding = CatalogBinding([str(i) for i in item_ids])
        self._item_cat = dict(zip(binding.ids, (str(c) for c in categories)))
        self.rt._category = self._item_cat.get
        self._base_ids = binding.ids
        self._users_base = {str(u): (int(n), h) for u, n, h in zip(snapshot.user_ids.tolist(), snapshot.user_clicks.tolist(),
                                                                   snapshot.histories)}
        self.validator.specs = live_specs(snapshot.item_impressions, snapshot.item_clicks, snapshot.user_clicks, self.windows)
        return binding

    def _base_user(self, user_id: str) -> tuple[int, list[str]]:
        b = self._users_base.get(user_id)
        if b is None:
            return 0, []
        ids = self._base_ids
        return b[0], [ids[r] for r in b[1].tolist() if 0 <= r < len(ids)]

    def extend_catalog(self, binding: "CatalogBinding", item_ids: Sequence[str], categories: Sequence[str]) -> None:
        """Items added while serving (their rows follow the existing ones)."""
        binding.extend(item_ids)
        for iid, cat in zip(item_ids, categories):
            self._item_cat[str(iid)] = str(cat)

    # ------------------------------------------------------------------ baselines
    def load_baselines(self, item_ids: Sequence[str], imps_per_day: Sequence[float], clicks_per_day: Sequence[float],
                       ts: float | None = None) -> int:
        """Batch baselines (daily aggregates) into the store's item records and the
        real-time state's stall fallback. Returns how many items were written."""
        ids = [str(i) for i in item_ids]
        self.rt.load_baseline(ids, imps_per_day, clicks_per_day)
        return write_baselines(self.store, ids, imps_per_day, clicks_per_day, self.clock() if ts is None else ts)

    # ------------------------------------------------------------------ consumer
    def start(self, source, checkpoint=None, name: str = "realtime") -> None:
        """Tail ``source`` (an ``EventSource``) in a thread, publishing into the store."""
        from feedrank.features.consumer import LogConsumer

        self.warm_up()
        try:
            self.consumer = LogConsumer(source, self.publisher, checkpoint, commit_every_s=self.commit_every_s, name=name)
        except Exception as exc:  # e.g. written with other windows: set it aside, rebuild from the log's start
            from pathlib import Path

            bad = Path(checkpoint).with_name(Path(checkpoint).name + ".unusable")
            log.warning("consumer checkpoint %s unusable (%s: %s); moved to %s, consuming from the start",
                        checkpoint, type(exc).__name__, exc, bad)
            Path(checkpoint).replace(bad)
            self.consumer = LogConsumer(source, self.publisher, checkpoint, commit_every_s=self.commit_every_s, name=name)
        if self.consumer.applied == 0 and self.consumer.resumed:
            try:  # resumed from a checkpoint: a fresh (e.g. memory://) store needs the state again
                self.publisher.republish()
            except Exception:
                log.warning("could not republish real-time features after resume; they refill as events arrive")
        self.consumer.start(self.poll_s)

    def warm_up(self) -> None:
        """Open the store's connections and load its scripts outside any request (the
        first Redis read otherwise pays a connect and a SCRIPT LOAD within its budget)."""
        for _ in range(2):
            try:
                self.store.get_items([STREAM_KEY], self._item_names, self.clock())
                self.store.get_user("__warmup__", self.clock())
            except Exception as exc:
                log.warning("feature store %s not reachable at start (%s: %s); serving defaults until it is",
                            getattr(self.store, "url", "?"), type(exc).__name__, exc)
                return

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
            self.consumer = None
        self.guard.close()

    # ------------------------------------------------------------------ reads
    def read_user(self, user_id: str, now: float, binding: "CatalogBinding | None" = None) -> tuple[LiveUser | None, str]:
        """The user's published record (validated), or None; and the read status."""
        rec, outcome = self.guard.call(self.store.get_user, user_id, now)
        if outcome != "ok":
            self._served("default")
            return None, "default"
        if rec is None:
            return None, "live"
        n = self.validator.check_value(f"user:{user_id}", "n_clicks", rec.get("n_clicks", 0.0))
        hashes = []
        for k in range(self.history_len):
            h = rec.get(f"c{k}")
            if h is None:
                break
            if isinstance(h, float) and (binding is None or h in binding.hash_rows):
                hashes.append(h)
        aff = {}
        for name, v in rec.items():
            if name.startswith("aff:"):
                x = self.validator.check_value(f"user:{user_id}", "category_share", v)
                if 0.0 <= x <= 1.0:
                    aff[name[4:]] = x
        return LiveUser(int(n), tuple(hashes), aff), "live"

    def read_items(self, item_ids: Sequence[str], now: float, fallback_imps: np.ndarray,
                   fallback_clicks: np.ndarray) -> LiveItems:
        """Counts over the longest window for ``item_ids`` in one batched read, validated;
        where a value is missing or bad, the fallback (the caller's in-process counter).
        ``trending`` is 0 here (the ranker does not use it; ``hot_items`` serves it)."""
        n = len(item_ids)
        batch, outcome = self.guard.call(self.store.get_items, item_ids, self._item_names, now)
        zeros = np.zeros(n)
        if outcome != "ok":
            self._served("default")
            return LiveItems(np.asarray(fallback_imps, dtype=np.float64), np.asarray(fallback_clicks, dtype=np.float64),
                             zeros, "default", 0)
        present = batch.present if batch.present is not None else ~np.isnan(batch.values)
        fb = np.zeros((n, len(self._item_names)))
        fb[:, 0], fb[:, 1] = fallback_imps, fallback_clicks
        clean, replaced = self.validator.clean(item_ids, self._item_names, batch.values, present, ts=batch.ts, now=now,
                                               bad_type=batch.bad_type, fallback=fb)
        if self.stream_stalled():
            scale = max(self.windows) / 86400.0
            has = present[:, 2] | present[:, 3]
            imps = np.where(has, clean[:, 2] * scale, fallback_imps)
            clks = np.where(has, clean[:, 3] * scale, fallback_clicks)
            status = "baseline"
        else:
            imps, clks, status = clean[:, 0], clean[:, 1], "live"
        self._served(status)
        return LiveItems(imps, clks, zeros, status, replaced)

    def stream_stalled(self) -> bool:
        """True when the consumer's heartbeat in the store is older than ``stall_s`` (or
        missing). The heartbeat is read at most every ``heartbeat_check_s``."""
        t = time.monotonic()
        beat, at = self._beat
        if t - at >= self.heartbeat_check_s:
            got, outcome = self.guard.call(self.store.get_items, [STREAM_KEY], ["heartbeat"], self.clock())
            if outcome == "ok":
                v = got.values[0, 0]
                beat = float(v) if np.isfinite(v) else -np.inf
                self._beat = (beat, t)
        return not (self.clock() - beat <= self.stall_s)

    def hot_items(self, now: float, k: int) -> list[str]:
        """Up to ``k`` item ids with the most clicks in the middle window (trending score
        breaks ties), from this process's real-time state; [] when nothing is streaming."""
        with self.rt._lock:
            ids = list(self.rt._slots)
        if not ids or k <= 0:
            return []
        t = max(now, self.publisher.stream_now) if np.isfinite(self.publisher.stream_now) else now
        _, clks = self.rt.counts(ids, t)
        mid = 1 if len(self.windows) > 2 else 0
        score = clks[:, mid] + 1e-3 * self.rt.trending(clks)
        order = np.argsort(-score, kind="stable")[:k]
        return [ids[i] for i in order.tolist() if clks[i, mid] > 0]

    def _served(self, status: str) -> None:
        with self._lock:
            self.served[status] += 1

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, Any]:
        c = self.consumer
        beat = self.rt._heartbeat
        return {
            "store": getattr(self.store, "url", type(self.store).__name__),
            "reads": dict(self.guard.outcomes),
            "served": dict(self.served),
            "invalid": {f"{f}/{r}": n for (f, r), n in self.validator.counts().items()},
            "consumer": None if c is None else {"applied": c.applied, "errors": c.errors, "offset": c.offset_json(),
                                                "committed": c.offset_json(committed=True)},
            "published": self.publisher.published,
            "publish_errors": self.publisher.publish_errors,
            "heartbeat_age_s": None if not np.isfinite(beat) else round(self.clock() - beat, 3),
            "stalled": self.rt.stalled(),
            "realtime": self.rt.stats(),
        }
