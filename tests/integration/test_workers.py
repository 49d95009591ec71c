"""`feedrank serve --workers 2`: requests spread over both workers, and every figure read
from any worker covers both. /metrics totals (prometheus_client multiprocess mode) equal
the requests and events sent; each worker's real-time consumer applies every partition's
events; the model version gauge says which model answers."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from feedrank.data.eventlog import EventLog


def _sample_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"^([^{ ]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def _impressions(part: Path) -> int:
    if not part.is_dir():
        return 0
    with EventLog(part, readonly=True) as log:
        return sum(1 for r in log.read() if r.event.kind.value == "impression")


def _scrape(url: str) -> str:
    with httpx.Client(timeout=10) as c:  # a fresh connection: any worker may answer
        r = c.get(f"{url}/metrics")
    assert r.status_code == 200
    return r.text


def _feed(url: str, i: int) -> int:
    with httpx.Client(timeout=30) as c:  # a new connection per request: the kernel spreads them
        r = c.get(f"{url}/v1/feed", params={"user_id": f"u{i % 50}", "k": 5})
    assert r.status_code == 200, r.text
    return len(r.json()["items"])


def test_two_workers_metrics_sum_and_readers_see_both_partitions(two_workers):
    url, events = two_workers.url, two_workers.events_dir
    sent, shown = 0, 0
    with ThreadPoolExecutor(4) as pool:
        while sent < 400:  # until both workers have answered (their partitions hold impressions)
            shown += sum(pool.map(lambda i: _feed(url, i), range(sent, sent + 20)))
            sent += 20
            time.sleep(0.3)  # impressions are written in the background
            if _impressions(events / "w0") and _impressions(events / "w1"):
                break
    assert _impressions(events / "w0") and _impressions(events / "w1"), "requests never reached both workers"
    clicks = [{"event_id": f"c{i}", "ts": time.time(), "user_id": "u1", "item_id": None, "kind": "click"} for i in range(7)]
    first = httpx.get(f"{url}/v1/feed", params={"user_id": "u1", "k": 5}).json()
    version = first["model_version"]
    sent += 1
    shown += len(first["items"])
    for c in clicks:
        c["item_id"] = first["items"][0]["item_id"]
    for k in range(0, 7, 3):  # three batches, on fresh connections
        with httpx.Client(timeout=30) as cl:
            assert cl.post(f"{url}/v1/events", json={"events": clicks[k:k + 3]}).json()["accepted"] == len(clicks[k:k + 3])

    deadline = time.monotonic() + 60
    while True:
        texts = [_scrape(url) for _ in range(6)]  # several scrapes: both workers answer some
        feeds = [_sample_sum(t, "feedrank_feed_requests_total") for t in texts]
        accepted = [_sample_sum(t, "feedrank_events_total", result="accepted") for t in texts]
        written = [_sample_sum(t, "feedrank_impressions_total", result="written") for t in texts]
        applied = [_sample_sum(t, "feedrank_features_consumer_applied_total") for t in texts]
        in_log = shown + 7
        # each worker's consumer reads both partitions: the sum over the two is twice the log
        if all(w == shown for w in written) and all(a == 2 * in_log for a in applied):
            break
        assert time.monotonic() < deadline, (feeds, accepted, written, applied, shown, in_log)
        time.sleep(1.0)
    assert feeds == [sent] * 6 and accepted == [7] * 6
    for t in texts:
        assert _sample_sum(t, "feedrank_stage_latency_seconds_count", stage="total") == sent
        assert _sample_sum(t, "feedrank_model_version_info", version=version) == 1.0
        assert _sample_sum(t, "feedrank_http_responses_total", endpoint="/v1/events", status="202") == 3
        # feeds handed between the workers (serving/offload.py): each one answered by the peer
        assert _sample_sum(t, "feedrank_offload_total", result="sent") == _sample_sum(t, "feedrank_offload_total", result="received")
        assert _sample_sum(t, "feedrank_offload_total", result="failed") == 0
    live = httpx.get(f"{url}/dashboard/api/live").json()
    assert live["feeds_total"] == sent and live["events_total"] == 7 and live["counter_lag"] == 0
