"""GET /v1/feed's direct ASGI path answers exactly what the FastAPI route would, and hands
anything unusual to the route; worker partitions of the event log are read back whole."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feedrank.config import PipelineConfig, ServingConfig
from feedrank.errors import FeedrankError
from feedrank.data.eventlog import EventLog, partition_roots, read_partitions
from feedrank.serving import create_app
from feedrank.serving.fastfeed import FeedFastPath
from feedrank.serving.workers import claim_slot
from feedrank.types import Event, EventKind

_spec = importlib.util.spec_from_file_location("serving_test_app", Path(__file__).with_name("test_app.py"))
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)  # the FakeService of test_app.py
FakeService = _mod.FakeService


def _fast(app) -> FeedFastPath:
    app.build_middleware_stack()
    node = app.middleware_stack
    while node is not None and not isinstance(node, FeedFastPath):
        node = getattr(node, "app", None)
    assert node is not None, "the fast path is not installed"
    return node


@pytest.fixture()
def client(tmp_path: Path):
    service = FakeService()
    log = EventLog(tmp_path / "events")
    app = create_app(service, log, ServingConfig(max_k=50), PipelineConfig(deadline_ms=150))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, service, _fast(app)
    log.close()


def _strip(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "request_id"}


def test_fast_path_answers_the_same_as_the_route(client) -> None:
    c, service, fast = client
    served = fast.served
    a = c.get("/v1/feed", params={"user_id": "u1", "k": 5}, headers={"X-Deadline-Ms": "40", "X-Request-Id": "r-1"})
    assert fast.served == served + 1  # answered by the fast path
    fast_req = service.requests[-1]
    # "4e1" is valid for the route but not plain decimal: the fast path hands it over
    b = c.get("/v1/feed", params={"user_id": "u1", "k": 5}, headers={"X-Deadline-Ms": "4e1", "X-Request-Id": "r-2"})
    assert fast.served == served + 1  # the route answered
    route_req = service.requests[-1]
    assert a.status_code == b.status_code == 200
    assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
    assert a.headers["x-request-id"] == "r-1" and b.headers["x-request-id"] == "r-2"
    assert _strip(a.json()) == _strip(b.json())
    assert (fast_req.k, fast_req.deadline_ms, fast_req.explain) == (route_req.k, route_req.deadline_ms, route_req.explain) == (5, 40.0, False)
    assert a.json()["request_id"] == "r-1"


@pytest.mark.parametrize("params,headers", [
    ({"user_id": "u1", "k": "05x"}, {}), ({"user_id": "  "}, {}), ({"user_id": "u1", "explain": "maybe"}, {}),
    ({"user_id": "u1"}, {"X-Deadline-Ms": "inf"}), ({"user_id": "u1"}, {"X-Request-Id": "a b"}), ({"user_id": "u1", "k": "999"}, {}),
])
def test_unusual_requests_go_to_the_route(client, params, headers) -> None:
    c, service, fast = client
    served = fast.served
    r = c.get("/v1/feed", params=params, headers=headers)
    assert fast.served == served and r.status_code == 422 and service.requests == []


def test_fast_path_counts_metrics_and_maps_errors(client) -> None:
    c, _, fast = client
    assert c.get("/v1/feed", params={"user_id": "u9", "explain": "true"}).status_code == 200
    r = c.get("/v1/feed", params={"user_id": "boom"})
    assert r.status_code == 500 and r.json()["request_id"] == r.headers["x-request-id"]
    text = c.get("/metrics").text
    assert 'feedrank_http_responses_total{endpoint="/v1/feed",status="200"} 1.0' in text
    assert 'feedrank_http_responses_total{endpoint="/v1/feed",status="500"} 1.0' in text
    assert 'feedrank_feed_requests_total{tier="full"} 1.0' in text
    assert 'feedrank_request_latency_seconds_count{endpoint="/v1/feed"} 2.0' in text


def _imp(eid: str) -> Event:
    return Event(event_id=eid, ts=time.time(), user_id="u1", item_id="n1", kind=EventKind.IMPRESSION, position=0)


def test_partitions_are_read_whole_and_once(tmp_path: Path) -> None:
    root = tmp_path / "events"
    for part, ids in (("w0", ["a", "b"]), ("w1", ["c", "a"]), ("w10", ["d"])):  # "a": a retry that hit two workers
        with EventLog(root / part) as log:
            log.append([_imp(i) for i in ids])
    assert [p.name for p in partition_roots(root)] == ["w0", "w1", "w10"]
    assert sorted(e.event_id for e in read_partitions(root)) == ["a", "b", "c", "d"]
    with EventLog(root) as log:  # a single-process server's own segments are read too
        log.append([_imp("e")])
    assert partition_roots(root)[0] == root
    assert sorted(e.event_id for e in read_partitions(root)) == ["a", "b", "c", "d", "e"]


def test_worker_slots_are_exclusive(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, time; from feedrank.serving.workers import claim_slot; "
            "print(claim_slot(sys.argv[1], 2), flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        assert claim_slot(tmp_path, 2) == 1          # the next free slot
        with pytest.raises(FeedrankError, match="worker slots"):
            claim_slot(tmp_path, 2)                  # both taken
    finally:
        holder.kill()
        holder.wait()
