"""Prometheus metrics of one app, in their own ``CollectorRegistry`` (so tests can build
many apps in one process), summed over every worker process in multiprocess mode.

Names:
    feedrank_stage_latency_seconds{stage}          histogram, from FeedResponse.timings_ms
    feedrank_request_latency_seconds{endpoint}     histogram, whole HTTP request
    feedrank_http_responses_total{endpoint,status} counter
    feedrank_feed_requests_total{tier}             counter, which ladder tier answered
    feedrank_feed_items                            histogram, items per served feed
    feedrank_events_total{result}                  counter, accepted|duplicate|rejected
    feedrank_impressions_total{result}             counter, written|duplicate|dropped|failed
    feedrank_impression_queue_depth                gauge, impressions waiting to be written
    feedrank_model_version_info{version}           the model answering now (1)
    feedrank_offload_total{result}                 feed requests handed between workers: sent|received|failed

Multiprocess mode (``feedrank serve --workers N``; serving/workers.py): the supervisor
points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start, so every
worker's counters and histograms live in memory-mapped files there and ``/metrics`` on any
worker returns the sum over all workers (prometheus_client's ``MultiProcessCollector``;
a dead worker's counts stay in the totals). Figures that are read at scrape time from
objects in one process (the impression writer's counters, the live features' counters
and gauges) are mirrored into multiprocess metrics by a thread once a second and on
every scrape: counters by their increase, gauges by value (``livesum``, or ``livemax``
for ages and flags: a dead worker's gauges are dropped with ``mark_process_dead``). The
model version is a gauge ``feedrank_model_version_info{version}`` in ``livemax`` mode: 1
for every version some live worker answers with (two during a hot swap). Single-process
mode is unchanged: one registry, read as it is.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import threading
from typing import Any, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client import values as _prom_values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from feedrank.serving.workers import MULTIPROC_ENV  # one definition (workers.py sets it for the workers)

log = logging.getLogger("feedrank.serving")

STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
LOOP_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
MIRROR_EVERY_S = 1.0
GAUGE_MODES = {"feedrank_features_heartbeat_age_seconds": "livemax", "feedrank_features_stalled": "livemax",
               "feedrank_features_node_consumer_applied": "livemax", "feedrank_features_node_consumer_errors": "livemax"}
_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The multiprocess folder when this process writes its metrics to one: the variable
    is set, is a folder, and was set before prometheus_client was imported (it picks its
    value class then)."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path or not os.path.isdir(path) or _prom_values.ValueClass is _prom_values.MutexValue:
        return None
    return path


def mark_dead_workers(path: str) -> list[int]:
    """Drop the live-gauge files of processes that no longer exist (a crashed or replaced
    worker); returns their pids. Counters and histograms of dead workers stay summed."""
    from prometheus_client import multiprocess

    dead = set()
    for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        m = _LIVE_FILE.match(os.path.basename(f))
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:  # exists, another user's
            pass
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


class _WriterCollector(Collector):
    """Reads the impression writer's counters at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        c = CounterMetricFamily("feedrank_impressions", "Server-logged impression events by outcome", labels=["result"])
        c.add_metric(["written"], s.get("written", 0))
        c.add_metric(["duplicate"], s.get("duplicates", 0))
        c.add_metric(["dropped"], s.get("dropped", 0))
        c.add_metric(["failed"], s.get("failed", 0))
        yield c
        yield GaugeMetricFamily(
            "feedrank_impression_queue_depth", "Impressions waiting to be written", value=s.get("pending", 0)
        )


class _Mirror:
    """Copies scrape-time collectors of this process into multiprocess metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.collectors: list[Collector] = []
        self.metrics: dict[str, Any] = {}
        self.last: dict[tuple, float] = {}
        self.lock = threading.Lock()

    def _metric(self, family: Metric, labels: tuple[str, ...]) -> Any:
        m = self.metrics.get(family.name)
        if m is None:
            if family.type == "counter":
                m = Counter(family.name, family.documentation or family.name, labels, registry=self.registry)
            else:
                m = Gauge(family.name, family.documentation or family.name, labels, registry=self.registry,
                          multiprocess_mode=GAUGE_MODES.get(family.name, "livesum"))
            self.metrics[family.name] = m
        return m

    def run_once(self) -> None:
        with self.lock:
            for collector in self.collectors:
                try:
                    families = list(collector.collect())
                except Exception:
                    log.exception("metrics mirror: a collector failed")
                    continue
                for fam in families:
                    if fam.type not in ("counter", "gauge"):
                        continue
                    for s in fam.samples:
                        if fam.type == "counter" and not s.name.endswith("_total"):
                            continue  # _created
                        names = tuple(sorted(s.labels))
                        m = self._metric(fam, names)
                        child = m.labels(**s.labels) if names else m
                        if fam.type == "counter":
                            key = (fam.name, tuple(sorted(s.labels.items())))
                            delta = s.value - self.last.get(key, 0.0)
                            if delta > 0:
                                child.inc(delta)
                                self.last[key] = s.value
                        elif not math.isnan(s.value):
                            child.set(s.value)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        r = self.registry
        self.stage_latency = Histogram(
            "feedrank_stage_latency_seconds", "Latency of one pipeline stage", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.request_latency = Histogram(
            "feedrank_request_latency_seconds",
            "Latency of a whole HTTP request",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.responses = Counter(
            "feedrank_http_responses", "HTTP responses by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.feed_requests = Counter(
            "feedrank_feed_requests", "Feed requests by the tier that answered", ["tier"], registry=r
        )
        self.feed_items = Histogram(
            "feedrank_feed_items", "Items per served feed", buckets=(0, 1, 5, 10, 20, 50, 100, 200, 500), registry=r
        )
        self.events = Counter("feedrank_events", "Client events by result", ["result"], registry=r)
        # how late the event loop's 25 ms probe timer fires (serving/app.py): queueing behind
        # requests, and stalls (a background thread holding the GIL, a collection) on top
        self.loop_lag = Histogram("feedrank_loop_lag_seconds", "Lateness of the event loop's periodic probe timer",
                                  buckets=LOOP_LAG_BUCKETS, registry=r)
        for result in ("accepted", "duplicate", "rejected"):
            self.events.labels(result=result)
        # feed requests handed between workers (serving/offload.py): sent to an idle worker,
        # received from a busy one, or failed (computed by the sender after all)
        self.offload = Counter("feedrank_offload", "Feed requests handed between worker processes", ["result"], registry=r)
        for result in ("sent", "received", "failed"):
            self.offload.labels(result=result)
        self._mirror: _Mirror | None = None
        self._version_of: Callable[[], str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.multiprocess_dir:
            self.model_version: Any = Gauge("feedrank_model_version_info", "The model version answering requests (1)",
                                            ["version"], registry=r, multiprocess_mode="livemax")
            self._mirror = _Mirror(r)
        else:
            self.model_version = Info("feedrank_model_version", "The model version answering requests", registry=r)
        self._version: str | None = None
        self._stage_children: dict[str, object] = {}
        self._tier_children: dict[str, object] = {}

    # ------------------------------------------------------------------ scrape-time figures
    def watch(self, collector: Collector) -> None:
        """Add a collector read at scrape time (mirrored into the shared files in multiprocess mode)."""
        if self._mirror is None:
            self.registry.register(collector)
            return
        self._mirror.collectors.append(collector)
        self._start_mirror()

    def watch_writer(self, stats: Callable[[], dict[str, int]]) -> None:
        self.watch(_WriterCollector(stats))

    def track_version(self, version_of: Callable[[], str]) -> None:
        """Where the answering model version is read (each scrape; in multiprocess mode also
        once a second, so every worker's version is in the shared files)."""
        self._version_of = version_of
        if self._mirror is not None:
            self._start_mirror()

    def set_model_version(self, version: str) -> None:
        if version == self._version:
            return
        if self.multiprocess_dir:
            if self._version is not None:
                self.model_version.labels(version=str(self._version)).set(0)
            self.model_version.labels(version=str(version)).set(1)
        else:
            self.model_version.info({"version": str(version)})
        self._version = version

    def _refresh(self) -> None:
        if self._version_of is not None:
            try:
                self.set_model_version(self._version_of())
            except Exception:
                log.exception("could not read the model version")
        if self._mirror is not None:
            self._mirror.run_once()

    def _start_mirror(self) -> None:
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(MIRROR_EVERY_S):
                self._refresh()

        self._thread = threading.Thread(target=run, name="metrics-mirror", daemon=True)
        self._thread.start()

    def view(self) -> CollectorRegistry:
        """The registry to read figures from: this app's, or in multiprocess mode one over
        every worker's files (read on each ``collect``)."""
        if not self.multiprocess_dir:
            return self.registry
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg, path=self.multiprocess_dir)
        return reg

    def exposition(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and content type."""
        self._refresh()
        if self.multiprocess_dir:
            mark_dead_workers(self.multiprocess_dir)
        return generate_latest(self.view()), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """Stop the mirror thread; in multiprocess mode drop this process's live gauges."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._mirror is not None:
            self._mirror.run_once()  # final counts into the shared files
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    # ------------------------------------------------------------------ per request
    def observe_timings(self, timings_ms: dict[str, float]) -> None:
        children = self._stage_children
        for stage, ms in timings_ms.items():
            try:
                seconds = float(ms) / 1000.0
            except (TypeError, ValueError):
                continue
            if seconds == seconds and seconds >= 0:  # skip NaN / negative
                child = children.get(stage)
                if child is None:  # labels() costs a lock and a dict lookup: resolve each stage once
                    child = children[stage] = self.stage_latency.labels(stage=str(stage))
                child.observe(seconds)

    def observe_feed(self, timings_ms: dict[str, float], tier: str, n_items: int) -> None:
        """Everything /metrics records about one served feed."""
        self.observe_timings(timings_ms)
        child = self._tier_children.get(tier)
        if child is None:
            child = self._tier_children[tier] = self.feed_requests.labels(tier=tier)
        child.inc()
        self.feed_items.observe(n_items)
