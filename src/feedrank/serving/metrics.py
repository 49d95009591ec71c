"""Prometheus metrics of one app, in their own ``CollectorRegistry`` (so tests can build
many apps in one process).

Names:
    feedrank_stage_latency_seconds{stage}          histogram, from FeedResponse.timings_ms
    feedrank_request_latency_seconds{endpoint}     histogram, whole HTTP request
    feedrank_http_responses_total{endpoint,status} counter
    feedrank_feed_requests_total{tier}             counter, which ladder tier answered
    feedrank_feed_items                            histogram, items per served feed
    feedrank_events_total{result}                  counter, accepted|duplicate|rejected
    feedrank_impressions_total{result}             counter, written|duplicate|dropped|failed
    feedrank_impression_queue_depth                gauge, impressions waiting to be written
    feedrank_model_version_info{version}           info, the model answering now
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


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


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
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
        for result in ("accepted", "duplicate", "rejected"):
            self.events.labels(result=result)
        self.model_version = Info("feedrank_model_version", "The model version answering requests", registry=r)
        self._version: str | None = None
        self._stage_children: dict[str, object] = {}
        self._tier_children: dict[str, object] = {}

    def watch_writer(self, stats: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_WriterCollector(stats))

    def set_model_version(self, version: str) -> None:
        if version != self._version:
            self.model_version.info({"version": str(version)})
            self._version = version

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
