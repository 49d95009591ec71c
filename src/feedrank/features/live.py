"""Real-time features in the serving path: event log -> consumer -> online store -> request.

    live = LiveFeatures(open_store(cfg.store_url), rt, cfg)        # one per process
    live.bind(snapshot, catalog_item_ids, catalog_categories)       # the model being served
    live.start(event_log, checkpoint)                               # consumer thread
    user = live.read_user("u1", now)      # LiveUser | None, status   (one round trip)
    items = live.read_items(ids, now, fb_imps, fb_clicks)   # LiveItems, one batched read
    items = live.read_rows(binding, rows, now, fb_imps, fb_clicks)   # the same through a per-row cache
    live.hot_items(now, k)                # item ids clicked most in the middle window
    live.stop()                           # before the event log closes

The plumbing (``ReadGuard``, ``StorePublisher``, baselines, validation ranges, the
records) is in ``features/live_io.py``; it is re-exported here.

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

import logging
import threading
import time
import weakref
from typing import Any, Callable, Sequence

import numpy as np

from feedrank.features.live_io import (BASE_FIELDS, HASH_BITS, STATUSES, STREAM_KEY, LiveItems, LiveUser,  # noqa: F401
                                       ReadGuard, StorePublisher, baselines_from_daily, item_hash, live_specs,
                                       window_fields, worst, write_baselines)
from feedrank.features.mirror import keys_from_hashes
from feedrank.features.mirror_reader import MirrorStore
from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.validation import FeatureValidator

log = logging.getLogger(__name__)

# seconds ``read_rows`` reuses an item's store fields (the freshness contract is "within minutes"):
# a shared store (Redis, SQLite) is written by other processes too; a memory:// store only by
# this object, which invalidates what it writes, so only its own expiry/eviction can go unseen
ITEM_CACHE_S = 1.0
CONSUMER_BATCH = 128  # events per apply: ~1.5 ms at ~12 us/event (benchmarks/consumer_cpu.py), then requests may run
ITEM_CACHE_MEMORY_S = 60.0

class CatalogBinding:
    """One model's catalogue as seen by live reads: item hash -> catalogue row, and the
    per-row cache of validated store fields that ``LiveFeatures.read_rows`` serves from.

    Cache arrays: ``cached`` (N, 4) float64, the item record's longest-window impressions
    and clicks and its two baseline fields (0 where the store has none); ``cached_base``
    (N,) bool, whether it has a baseline; ``cached_at`` (N,) ``time.monotonic()`` of the
    read (-inf: never read, or invalidated)."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        hashes = [item_hash(i) for i in ids]
        self.hash_rows = dict(zip(hashes, range(len(ids))))
        self.keys = keys_from_hashes(hashes)  # row -> mirror key (features/mirror.py)
        self.id_rows = {i: r for r, i in enumerate(ids)}  # what the consumer's invalidation looks up (no hashing)
        self._lock = threading.Lock()
        n = len(ids)
        self.cached = np.zeros((n, 4))
        self.cached_base = np.zeros(n, dtype=bool)
        self.cached_at = np.full(n, -np.inf)
        # with the node consumer's mirror (no store write here): the model's batch baselines per
        # row, imps and clicks per day (``LiveFeatures.load_baselines``)
        self.base = np.zeros((n, 2))
        self.has_base = np.zeros(n, dtype=bool)

    def extend(self, item_ids: Sequence[str]) -> None:
        with self._lock:
            hashes = [item_hash(str(iid)) for iid in item_ids]
            before = [self.id_rows.get(str(iid)) for iid in item_ids]  # an update of an item keeps its baseline
            for iid, h in zip(item_ids, hashes):
                self.hash_rows[h] = len(self.ids)
                self.id_rows[str(iid)] = len(self.ids)
                self.ids.append(str(iid))
            self.keys = np.concatenate([self.keys, keys_from_hashes(hashes)])
            m = len(self.ids) - len(self.cached_at)
            self.cached = np.concatenate([self.cached, np.zeros((m, 4))])
            self.cached_base = np.concatenate([self.cached_base, np.zeros(m, dtype=bool)])
            self.cached_at = np.concatenate([self.cached_at, np.full(m, -np.inf)])
            base, has_base = np.zeros((m, 2)), np.zeros(m, dtype=bool)
            old = [(k, r) for k, r in enumerate(before) if r is not None]
            if old:
                at, rows = np.asarray(old, dtype=np.int64).T
                base[at], has_base[at] = self.base[rows], self.has_base[rows]
            self.base = np.concatenate([self.base, base])
            self.has_base = np.concatenate([self.has_base, has_base])

    def invalidate(self, item_ids: Sequence[str] | None = None) -> None:
        """Forget the cached fields of these items (all: None); they were just written."""
        with self._lock:  # extend (another thread) grows the maps before it swaps the arrays
            if item_ids is None:
                self.cached_at[:] = -np.inf
                return
            get = self.id_rows.get
            rows = [r for r in map(get, item_ids) if r is not None]
            if rows:
                self.cached_at[np.asarray(rows, dtype=np.int64)] = -np.inf

    def rows(self, hashes: Sequence[float]) -> list[int]:
        """Catalogue rows of ``hashes`` (unknown items dropped), in order."""
        return [self.hash_rows[h] for h in hashes if h in self.hash_rows]


def hot_item_ids(rt: RealtimeFeatures, stream_now: float, now: float, k: int) -> list[str]:
    """Up to ``k`` item ids of ``rt`` with the most clicks in the middle window (trending
    score breaks ties) at ``max(now, stream_now)``; only items with such clicks."""
    with rt._lock:
        ids = list(rt._slots)
    if not ids or k <= 0:
        return []
    t = max(now, stream_now) if np.isfinite(stream_now) else now
    _, clks = rt.counts(ids, t)
    mid = 1 if len(rt.windows) > 2 else 0
    score = clks[:, mid] + 1e-3 * rt.trending(clks)
    order = np.argsort(-score, kind="stable")[:k]
    return [ids[i] for i in order.tolist() if clks[i, mid] > 0]


class _RowIds:
    """``ids[rows[i]]`` on demand (the validator names an item only when it reports one)."""

    def __init__(self, ids: list[str], rows: np.ndarray) -> None:
        self.ids, self.rows = ids, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> str:
        return self.ids[int(self.rows[i])]


class _NodeConsumerView:
    """The node consumer's counters (``MirrorStore.stats()``) where ``stats()`` reads a consumer's."""

    def __init__(self, node: dict) -> None:
        self.applied, self.errors, self.node = int(node["applied"]), int(node["errors"]), node

    def offset_json(self, committed: bool = False) -> dict:
        return {"node_consumer_pid": self.node["writer_pid"], "mirror_items": self.node["items"],
                "mirror_users": self.node["users"], "torn_reads": self.node["torn_reads"],
                "truncated": self.node["truncated"], "dropped": self.node["dropped"], "evicted": self.node["evicted"]}


# ---------------------------------------------------------------------- the process-level object


class LiveFeatures:
    """Store + real-time state + consumer + guarded, validated reads (module docstring)."""

    def __init__(self, store, rt: RealtimeFeatures, *, history_len: int = 30, read_timeout_s: float = 0.05,
                 stall_s: float = 60.0, ttl_s: float = 7 * 86400.0, poll_s: float = 0.1, commit_every_s: float = 5.0,
                 item_cache_s: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store, self.rt = store, rt
        self.history_len = int(history_len)
        self.stall_s, self.ttl_s, self.poll_s, self.commit_every_s = float(stall_s), float(ttl_s), float(poll_s), float(commit_every_s)
        self.clock = clock
        # in-process dicts and the node's shared memory cannot be slow or down
        inline = type(store).__name__ in ("MemoryStore", "MirrorStore")
        self.mirror = isinstance(store, MirrorStore)  # the node consumer publishes; no consumer here
        self._mirror_fields_ok: tuple | None = None  # (mirror's item fields, carries the ones read)
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
        if item_cache_s is None:  # only what this object writes invalidates rows; others' writes age out
            item_cache_s = ITEM_CACHE_MEMORY_S if type(store).__name__ == "MemoryStore" else ITEM_CACHE_S
        self.item_cache_s = float(item_cache_s)
        self._bindings: weakref.WeakSet[CatalogBinding] = weakref.WeakSet()
        self.publisher.on_publish = self._invalidate
        self.cache_hits = 0
        self.cache_misses = 0
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
        self._bindings.add(binding)
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
        if self.mirror:  # the store is the node's: the baselines go onto the catalogue rows
            table = np.stack([np.asarray(imps_per_day, dtype=np.float64), np.asarray(clicks_per_day, dtype=np.float64)], 1)
            for binding in list(self._bindings):
                with binding._lock:
                    pairs = [(r, k) for k, r in enumerate(map(binding.id_rows.get, ids)) if r is not None]
                    if pairs:
                        rows, src = np.asarray(pairs, dtype=np.int64).T
                        binding.base[rows], binding.has_base[rows] = table[src], True
            return len(ids)
        try:
            return write_baselines(self.store, ids, imps_per_day, clicks_per_day, self.clock() if ts is None else ts)
        finally:
            self._invalidate(None if len(ids) > 1000 else ids)

    # ------------------------------------------------------------------ consumer
    def start(self, source, checkpoint=None, name: str = "realtime", yield_to: Callable[[], bool] | None = None) -> None:
        """Tail ``source`` (an ``EventSource``) in a thread, publishing into the store.
        ``yield_to``: the serving loop's "busy running a request" flag; with it the consumer
        applies in slices of ``CONSUMER_BATCH`` events and waits between slices while it is
        set (features/consumer.py), so a request does not wait behind a whole poll."""
        from feedrank.features.consumer import LogConsumer, open_consumer

        if self.mirror:  # the node consumer process reads the log and publishes into the mirror
            self.warm_up()
            log.info("live features from the node consumer's mirror %s (no consumer in this process)", self.store.url)
            return

        def consumer() -> LogConsumer:
            return LogConsumer(source, self.publisher, checkpoint, commit_every_s=self.commit_every_s, name=name,
                               batch_size=1024 if yield_to is None else CONSUMER_BATCH, yield_to=yield_to)

        self.warm_up()
        open_readers = getattr(source, "open_readers", None)
        if open_readers is not None:  # the other workers' partitions: checked now, at start, not by the first poll
            t0 = time.monotonic()
            try:
                n = open_readers()
                log.info("consumer %s: %d partition readers opened in %.1f s", name, n, time.monotonic() - t0)
            except Exception as exc:  # only an early start of what the first poll does (and reports)
                log.warning("consumer %s: opening the partition readers at start failed (%s: %s); the first poll "
                            "opens them", name, type(exc).__name__, exc)
        self.consumer = open_consumer(consumer, checkpoint)
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
        got = self._fetch(item_ids, now, fallback_imps, fallback_clicks)
        self._served(got.status)
        return got

    def read_rows(self, binding: CatalogBinding, rows: np.ndarray, now: float, fallback_imps: np.ndarray,
                  fallback_clicks: np.ndarray) -> LiveItems:
        """``read_items`` for catalogue ``rows`` of ``binding``, through its per-row cache:
        ``max(store value, fallback)`` per row, the store's value read at most
        ``item_cache_s`` ago (0: no cache).

        Only the rows not cached, or cached longer ago than that, are read, in one batched
        call. Staleness bound: what another process published is seen at most
        ``item_cache_s`` late; what this object writes (its consumer's publishing,
        ``load_baselines``) invalidates the rows at once. The store's fields are cached
        raw (window counts and baselines), so a stall switches to the baselines without a
        re-read."""
        rows = np.asarray(rows, dtype=np.int64)
        fb_imps = np.asarray(fallback_imps, dtype=np.float64)
        fb_clicks = np.asarray(fallback_clicks, dtype=np.float64)
        if self.mirror:
            return self._read_rows_mirror(binding, rows, now, fb_imps, fb_clicks)
        cache = self.item_cache_s > 0
        t = time.monotonic()
        stalled = self.stream_stalled()
        vals, has_base = binding.cached[rows], binding.cached_base[rows]
        stale = binding.cached_at[rows] < t - self.item_cache_s if cache else np.ones(len(rows), dtype=bool)
        n_stale = int(stale.sum())
        n_read, replaced, status = 0, 0, ("baseline" if stalled else "live")
        if n_stale:
            miss = np.unique(rows[stale])
            n_read = len(miss)
            got = self._fetch_fields([binding.ids[r] for r in miss.tolist()], now)
            if got is None:  # the store failed: in-process counters for the rows not cached
                status = "default"
                vals[stale], has_base[stale] = 0.0, False
            else:
                clean, base, replaced = got
                if cache:
                    with binding._lock:  # extend may swap the arrays: write into the current ones
                        binding.cached[miss], binding.cached_base[miss], binding.cached_at[miss] = clean, base, t
                pos = np.searchsorted(miss, rows[stale])
                vals[stale], has_base[stale] = clean[pos], base[pos]
        if stalled:
            scale = max(self.windows) / 86400.0
            imps, clicks = np.where(has_base, vals[:, 2] * scale, 0.0), np.where(has_base, vals[:, 3] * scale, 0.0)
        else:
            imps, clicks = vals[:, 0], vals[:, 1]
        with self._lock:
            self.cache_hits += len(rows) - n_stale
            self.cache_misses += n_read
            self.served[status] += 1
        return LiveItems(np.maximum(imps, fb_imps), np.maximum(clicks, fb_clicks), np.zeros(len(rows)), status, replaced)

    def _read_rows_mirror(self, binding: CatalogBinding, rows: np.ndarray, now: float, fb_imps: np.ndarray,
                          fb_clicks: np.ndarray) -> LiveItems:
        """``read_rows`` from the node consumer's mirror: every row read (a few vectorised
        lookups; no cache, so nothing is stale), the baselines from the binding's rows."""
        replaced, status = 0, "live"
        names = self._item_names[:2]
        batch, outcome = self.guard.call(self.store.get_keyed, binding.keys[rows], names, now)
        if outcome != "ok" or not self._mirror_has(names):  # no mirror (yet), or one of other windows
            status = "default"
            imps = clicks = np.zeros(len(rows))
        elif self.stream_stalled():
            status = "baseline"
            scale = max(self.windows) / 86400.0
            has = binding.has_base[rows]
            imps = np.where(has, binding.base[rows, 0] * scale, 0.0)
            clicks = np.where(has, binding.base[rows, 1] * scale, 0.0)
        else:
            clean, replaced = self.validator.clean(_RowIds(binding.ids, rows), names, batch.values, batch.present,
                                                   ts=batch.ts, now=now, fallback=np.zeros((len(rows), 2)))
            imps, clicks = clean[:, 0], clean[:, 1]
        with self._lock:
            self.cache_misses += len(rows)
            self.served[status] += 1
        return LiveItems(np.maximum(imps, fb_imps), np.maximum(clicks, fb_clicks), np.zeros(len(rows)), status, replaced)

    def _mirror_has(self, names: Sequence[str]) -> bool:
        """Whether the node's mirror carries ``names`` (a node consumer running another
        config's windows does not): checked once per mirror file, logged when not."""
        try:
            have = self.store.item_names()
        except Exception:
            return False
        if self._mirror_fields_ok is None or self._mirror_fields_ok[0] != have:
            ok = all(n in have for n in names)
            if not ok:
                log.error("the node consumer's mirror %s carries %s, not %s (features.windows_s differ between the "
                          "workers and the node consumer?): serving defaults", self.store.url, list(have), list(names))
            self._mirror_fields_ok = (have, ok)
        return self._mirror_fields_ok[1]

    def _invalidate(self, item_ids: list[str] | None = None) -> None:
        for binding in list(self._bindings):
            binding.invalidate(item_ids)

    def _fetch_fields(self, item_ids: Sequence[str], now: float,
                      fallback: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int] | None:
        """One guarded, validated batched read of the item fields: ((n, 4) values, where
        missing or invalid the ``fallback`` row (default 0); (n,) has a baseline; values
        replaced), or None if the read failed."""
        n = len(item_ids)
        batch, outcome = self.guard.call(self.store.get_items, item_ids, self._item_names, now)
        if outcome != "ok":
            return None
        present = batch.present if batch.present is not None else ~np.isnan(batch.values)
        fb = np.zeros((n, len(self._item_names))) if fallback is None else fallback
        clean, replaced = self.validator.clean(item_ids, self._item_names, batch.values, present, ts=batch.ts, now=now,
                                               bad_type=batch.bad_type, fallback=fb)
        return clean, present[:, 2] | present[:, 3], replaced

    def _fetch(self, item_ids: Sequence[str], now: float, fallback_imps: np.ndarray,
               fallback_clicks: np.ndarray) -> LiveItems:
        """``read_items`` without the status count: the store's value, the fallback where
        it is missing or invalid (baselines, or the fallback, when the stream stalled)."""
        n = len(item_ids)
        fb_imps = np.asarray(fallback_imps, dtype=np.float64)
        fb_clicks = np.asarray(fallback_clicks, dtype=np.float64)
        fb = np.zeros((n, len(self._item_names)))
        fb[:, 0], fb[:, 1] = fb_imps, fb_clicks
        got = self._fetch_fields(item_ids, now, fb)
        zeros = np.zeros(n)
        if got is None:
            return LiveItems(fb_imps, fb_clicks, zeros, "default", 0)
        clean, has_base, replaced = got
        if self.stream_stalled():
            scale = max(self.windows) / 86400.0
            imps = np.where(has_base, clean[:, 2] * scale, fb_imps)
            clks = np.where(has_base, clean[:, 3] * scale, fb_clicks)
            return LiveItems(imps, clks, zeros, "baseline", replaced)
        return LiveItems(clean[:, 0], clean[:, 1], zeros, "live", replaced)

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
        breaks ties), from this process's real-time state (with the node consumer: the list
        it published); [] when nothing is streaming."""
        if self.mirror:  # a stalled node's list would never decay: none then
            got, outcome = self.guard.call(self.store.hot_items)
            return list(got[:k]) if outcome == "ok" and k > 0 and not self.stream_stalled() else []
        return hot_item_ids(self.rt, self.publisher.stream_now, now, k)

    def _served(self, status: str) -> None:
        with self._lock:
            self.served[status] += 1

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, Any]:
        c = self.consumer
        beat = self.rt._heartbeat
        if self.mirror:  # the node consumer's figures, as its mirror says them
            try:
                node = self.store.stats()
                c = _NodeConsumerView(node)
                beat = node["heartbeat"]
            except Exception:
                c, beat = None, -np.inf
        return {
            "store": getattr(self.store, "url", type(self.store).__name__),
            "reads": dict(self.guard.outcomes),
            "served": dict(self.served),
            "invalid": {f"{f}/{r}": n for (f, r), n in self.validator.counts().items()},
            "consumer": None if c is None else {"applied": c.applied, "errors": c.errors, "offset": c.offset_json(),
                                                "committed": c.offset_json(committed=True)},
            "item_cache": {"ttl_s": self.item_cache_s, "hits": self.cache_hits, "misses": self.cache_misses},
            "published": self.publisher.published,
            "publish_errors": c.node["publish_errors"] if isinstance(c, _NodeConsumerView) else self.publisher.publish_errors,
            "heartbeat_age_s": None if not np.isfinite(beat) else round(self.clock() - beat, 3),
            "stalled": self.stream_stalled() if self.mirror else self.rt.stalled(),
            "realtime": self.rt.stats(),
        }
