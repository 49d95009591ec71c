"""The dashboard's live figures: histogram quantiles and windowed rates from a registry."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from feedrank.serving.dashboard import LiveSampler, quantile_from_buckets, scrape
from feedrank.serving.metrics import ServingMetrics


def test_quantile_from_buckets_interpolates():
    b = {0.001: 0.0, 0.002: 50.0, 0.005: 100.0, float("inf"): 100.0}
    assert quantile_from_buckets(b, 0.5) == pytest.approx(0.002)
    assert quantile_from_buckets(b, 0.75) == pytest.approx(0.0035)
    assert quantile_from_buckets({0.1: 0.0, float("inf"): 0.0}, 0.5) is None


def test_sampler_rates_tiers_and_latency():
    reg = CollectorRegistry()
    m = ServingMetrics(reg)
    sampler = LiveSampler(reg)
    first = sampler.snapshot()
    assert first["feeds_total"] == 0 and first["tier_mix"] == {}
    for i in range(30):
        m.observe_feed({"retrieve": 1.0, "total": 3.0 if i < 29 else 40.0}, "full" if i < 27 else "fallback", 10)
    m.events.labels(result="accepted").inc(12)
    snap = sampler.snapshot()
    assert snap["feeds_total"] == 30 and snap["events_total"] == 12
    assert snap["rps"] > 0 and snap["events_per_s"] > 0
    assert snap["tier_mix"]["full"] == pytest.approx(0.9)
    assert 2.0 <= snap["p50_ms"] <= 5.0 and snap["p99_ms"] > snap["p50_ms"]
    assert snap["counter_lag"] is None  # no real-time consumer in this registry
    assert scrape(reg)["feeds"]["fallback"] == 3
