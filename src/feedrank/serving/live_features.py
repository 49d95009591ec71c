"""Serving glue for real-time features: build ``LiveFeatures`` from the config, load a
model's batch baselines into it, and export its state to Prometheus.

    live = build_live(cfg)                       # None when features.live is false
    recommender.attach_live(live); load_model_baselines(live, recommender.art)
    create_app(..., live=live)                   # the lifespan starts/stops its consumer

Metrics (all prefixed ``feedrank_features_``): ``store_reads_total{outcome}`` (ok, timeout,
error, open), ``served_total{status}`` (live, baseline, default), ``invalid_total{feature,
reason}``, ``consumer_applied_total``, ``consumer_errors_total``, ``publish_errors_total``,
``heartbeat_age_seconds``, ``stalled``; with the node consumer (``features.consumer=node``)
``node_consumer_applied`` and ``node_consumer_errors`` (gauges: the one process's totals)
instead of the consumer counters.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from feedrank.config import FeedrankConfig
from feedrank.features.live import LiveFeatures
from feedrank.features.realtime import build_realtime
from feedrank.features.store.factory import open_store

log = logging.getLogger(__name__)


def build_live(cfg: FeedrankConfig, mirror_path: str | None = None) -> LiveFeatures | None:
    """The process's ``LiveFeatures`` for ``cfg.features`` (None when ``features.live`` is off).

    The store is opened even when it is down (Redis: no initial PING; its calls time out
    after 4x the read budget and are not retried), so the service starts and serves defaults.
    ``mirror_path``: the node consumer's shared-memory mirror (serving/node_consumer.py);
    when given, the process reads the live features there and runs no consumer."""
    fc = cfg.features
    if not fc.live:
        return None
    budget_s = fc.read_timeout_ms / 1000.0
    # records live 2 x ttl in the store, so the validator sees (and counts) stale ones in between
    if mirror_path:
        from feedrank.features.mirror_reader import MirrorStore

        store = MirrorStore(mirror_path, ttl_s=2 * fc.ttl_s)
    else:
        store = open_store(fc.store_url, ttl_s=2 * fc.ttl_s, socket_timeout=max(0.05, 4 * budget_s), retries=0,
                           connect=False)
    rt = build_realtime(fc, history_len=cfg.retrieval.history_len, prior_weight=cfg.ranking.ctr_prior)
    return LiveFeatures(store, rt, history_len=cfg.retrieval.history_len, read_timeout_s=budget_s, stall_s=fc.stall_s,
                        ttl_s=fc.ttl_s, poll_s=fc.poll_s, commit_every_s=fc.commit_every_s)


def snapshot_baselines(art) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-item impressions and clicks per day from a bundle's training snapshot (its
    cumulative counters over the span of its data: ``info["split"]`` train start to test end)."""
    split = art.info.get("split") or {}
    t0 = (split.get("train") or {}).get("ts_min")
    t1 = (split.get("test") or {}).get("ts_max") or (split.get("train") or {}).get("ts_max")
    days = max(1.0, (float(t1) - float(t0)) / 86400.0) if t0 is not None and t1 is not None else 1.0
    snap = art.snapshot
    n = len(snap.item_impressions)
    return art.catalog.item_ids[:n].tolist(), snap.item_impressions / days, snap.item_clicks / days


def load_model_baselines(live: LiveFeatures, art) -> int:
    """Batch baselines of a model into the store; a store that is down is logged, not fatal."""
    ids, imps, clicks = snapshot_baselines(art)
    try:
        return live.load_baselines(ids, imps, clicks)
    except Exception as exc:
        log.warning("could not load batch baselines into the feature store (%s: %s); serving goes on",
                    type(exc).__name__, exc)
        live.rt.load_baseline(ids, imps, clicks)
        return 0


class LiveCollector:
    """Prometheus collector over ``LiveFeatures.stats()`` (read at scrape time)."""

    def __init__(self, live: LiveFeatures) -> None:
        self.live = live

    def collect(self) -> Iterator:
        s = self.live.stats()
        reads = CounterMetricFamily("feedrank_features_store_reads", "Feature-store reads in requests by outcome",
                                    labels=["outcome"])
        for k, v in s["reads"].items():
            reads.add_metric([k], v)
        yield reads
        served = CounterMetricFamily("feedrank_features_served", "Requests by the feature status served",
                                     labels=["status"])
        for k, v in s["served"].items():
            served.add_metric([k], v)
        yield served
        invalid = CounterMetricFamily("feedrank_features_invalid",
                                      "Feature values replaced by their default, by feature and reason",
                                      labels=["feature", "reason"])
        for key, v in s["invalid"].items():
            f, r = key.split("/", 1)
            invalid.add_metric([f, r], v)
        yield invalid
        c = s["consumer"] or {}
        if self.live.mirror:  # one node consumer that every worker reports: a gauge, max over the workers
            yield GaugeMetricFamily("feedrank_features_node_consumer_applied",
                                    "Events applied by the node's consumer process", value=c.get("applied", 0))
            yield GaugeMetricFamily("feedrank_features_node_consumer_errors", "Failed polls of the node's consumer process",
                                    value=c.get("errors", 0))
        else:
            yield CounterMetricFamily("feedrank_features_consumer_applied", "Events applied by the real-time consumer",
                                      value=c.get("applied", 0))
            yield CounterMetricFamily("feedrank_features_consumer_errors", "Failed consumer polls", value=c.get("errors", 0))
        yield CounterMetricFamily("feedrank_features_publish_errors", "Failed writes into the feature store",
                                  value=s["publish_errors"])
        age = s["heartbeat_age_s"]
        yield GaugeMetricFamily("feedrank_features_heartbeat_age_seconds", "Seconds since the consumer last progressed",
                                value=float("nan") if age is None else age)
        yield GaugeMetricFamily("feedrank_features_stalled", "1 when the stream stalled (batch baselines served)",
                                value=1.0 if s["stalled"] else 0.0)
