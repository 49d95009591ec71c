"""Metrics in multiprocess mode (several workers): counters and histograms summed over
processes, mirrored scrape-time figures, the model version gauge, and a dead worker's
live gauges dropped. Each "worker" is a real process (prometheus_client picks its mode
when it is imported)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

WORKER = """
import sys
from feedrank.serving.metrics import ServingMetrics
m = ServingMetrics()
assert m.multiprocess_dir, "not in multiprocess mode"
n, version = int(sys.argv[1]), sys.argv[2]
for _ in range(n):
    m.observe_feed({"total": 5.0, "rank": 1.0}, "full", 3)
stats = {"written": 2 * n, "duplicates": 0, "dropped": 0, "failed": 0, "pending": 1}
m.watch_writer(lambda: stats)
m.track_version(lambda: version)
body, _ = m.exposition()
if len(sys.argv) > 3:
    m.close()
sys.stdout.write(body.decode())
"""


def run_worker(mdir: Path, n: int, version: str, *extra: str) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mdir)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(n), version, *extra], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def value(text: str, sample: str) -> float | None:
    m = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return None if m is None else float(m.group(1))


def test_workers_metrics_are_summed_and_dead_workers_gauges_dropped(tmp_path: Path):
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    first = run_worker(mdir, 3, "v1")            # exits without closing: like a killed worker
    assert value(first, 'feedrank_feed_requests_total{tier="full"}') == 3.0
    assert value(first, 'feedrank_model_version_info{version="v1"}') == 1.0
    second = run_worker(mdir, 4, "v2")
    assert value(second, 'feedrank_feed_requests_total{tier="full"}') == 7.0            # summed
    assert value(second, 'feedrank_stage_latency_seconds_count{stage="total"}') == 7.0
    assert value(second, 'feedrank_feed_items_sum') == 21.0
    assert value(second, 'feedrank_impressions_total{result="written"}') == 14.0       # mirrored counters
    assert value(second, "feedrank_impression_queue_depth") == 1.0                    # only the live worker's
    assert value(second, 'feedrank_model_version_info{version="v2"}') == 1.0
    assert value(second, 'feedrank_model_version_info{version="v1"}') is None          # the dead one's dropped
    third = run_worker(mdir, 1, "v2", "close")   # a worker that stops cleanly removes its live gauges
    assert value(third, 'feedrank_feed_requests_total{tier="full"}') == 8.0
    assert not list(mdir.glob("gauge_live*.db"))


def test_single_process_mode_is_unchanged():
    from feedrank.serving.metrics import ServingMetrics

    m = ServingMetrics()
    assert m.multiprocess_dir is None and m.view() is m.registry
    m.observe_feed({"total": 5.0}, "full", 2)
    m.watch_writer(lambda: {"written": 2, "pending": 0})
    m.set_model_version("v9")
    body = m.exposition()[0].decode()
    assert value(body, 'feedrank_feed_requests_total{tier="full"}') == 1.0
    assert value(body, 'feedrank_model_version_info{version="v9"}') == 1.0
    assert value(body, 'feedrank_impressions_total{result="written"}') == 2.0
    m.close()
