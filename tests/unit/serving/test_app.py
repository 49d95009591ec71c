"""The HTTP app against a fake FeedService and a real EventLog in tmp_path."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator, Sequence

import pytest
from fastapi.testclient import TestClient

from feedrank.config import PipelineConfig, ServingConfig
from feedrank.data.eventlog import EventLog
from feedrank.serving import create_app
from feedrank.types import Event, EventKind, FeedRequest, FeedResponse, Item, ScoredItem

ITEMS = {f"n{i}": Item(f"n{i}", title=f"Title {i}", category=["news", "sports"][i % 2]) for i in range(50)}
STAGES = ("context", "retrieve", "rank", "rerank")


class FakeService:
    def __init__(self) -> None:
        self.requests: list[FeedRequest] = []
        self.observed: list[Event] = []
        self.version = "fake-v1"

    @property
    def model_version(self) -> str:
        return self.version

    def recommend(self, request: FeedRequest) -> FeedResponse:
        if request.user_id == "boom":
            raise RuntimeError("model exploded")
        self.requests.append(request)
        tier = "cold_start" if not request.user_id.startswith("u") else "full"
        items = tuple(
            ScoredItem(it.item_id, score=1.0 / (r + 1), rank=r + 1, source="ann", title=it.title, category=it.category)
            for r, it in enumerate(list(ITEMS.values())[: request.k])
        )
        return FeedResponse(
            request_id=request.request_id or "none",
            user_id=request.user_id,
            items=items,
            model_version=self.version,
            tier=tier,
            timings_ms={s: 1.5 for s in STAGES},
        )

    def observe(self, events: Sequence[Event]) -> None:
        self.observed.extend(events)

    def has_item(self, item_id: str) -> bool:
        return item_id in ITEMS

    def get_item(self, item_id: str) -> Item | None:
        return ITEMS.get(item_id)

    def stage_names(self) -> tuple[str, ...]:
        return STAGES


NOW = time.time()


def click(eid: str, **kw) -> dict:
    d = {"event_id": eid, "ts": NOW - 5, "user_id": "u1", "item_id": "n3", "kind": "click", "position": 2}
    d.update(kw)
    return d


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[TestClient, FakeService, EventLog]]:
    service = FakeService()
    log = EventLog(tmp_path / "events")
    app = create_app(service, log, ServingConfig(max_k=50, max_events_per_request=10), PipelineConfig(deadline_ms=150))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, service, log
    log.close()


def test_feed_shape_and_request_fields(env) -> None:
    client, service, _ = env
    r = client.get("/v1/feed", params={"user_id": "u1", "k": 5}, headers={"X-Deadline-Ms": "40"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"request_id", "user_id", "model_version", "tier", "arm", "features", "timings_ms", "items"}
    assert body["arm"] is None  # no experiment running
    assert body["features"] == "local"  # no live feature store attached
    assert body["user_id"] == "u1" and body["model_version"] == "fake-v1" and body["tier"] == "full"
    assert body["timings_ms"] == {s: 1.5 for s in STAGES}
    assert [it["rank"] for it in body["items"]] == [1, 2, 3, 4, 5]
    assert set(body["items"][0]) == {"item_id", "score", "rank", "source", "title", "category", "propensity"}
    assert len(body["request_id"]) == 32 and r.headers["x-request-id"] == body["request_id"]
    req = service.requests[-1]
    assert req.k == 5 and req.deadline_ms == 40 and req.request_id == body["request_id"] and req.now is not None
    # the header can only lower the deadline; default is the pipeline's
    client.get("/v1/feed", params={"user_id": "u1"}, headers={"X-Deadline-Ms": "5000"})
    assert service.requests[-1].deadline_ms == 150 and service.requests[-1].k == 20
    client.get("/v1/feed", params={"user_id": "u1"}, headers={"X-Request-Id": "abc-123"})
    assert service.requests[-1].request_id == "abc-123"


@pytest.mark.parametrize(
    "params,headers",
    [
        ({"user_id": "u1", "k": 0}, {}),
        ({"user_id": "u1", "k": 51}, {}),
        ({"user_id": "u1", "k": "ten"}, {}),
        ({"k": 5}, {}),
        ({"user_id": "", "k": 5}, {}),
        ({"user_id": "u1"}, {"X-Deadline-Ms": "-3"}),
        ({"user_id": "u1"}, {"X-Deadline-Ms": "nan"}),
        ({"user_id": "u1"}, {"X-Request-Id": "has space"}),
    ],
)
def test_feed_bad_requests_are_422(env, params, headers) -> None:
    client, service, _ = env
    r = client.get("/v1/feed", params=params, headers=headers)
    assert r.status_code == 422, r.text
    assert service.requests == []


def test_unknown_user_gets_cold_start(env) -> None:
    client, _, _ = env
    r = client.get("/v1/feed", params={"user_id": "never-seen", "k": 3})
    assert r.status_code == 200 and r.json()["tier"] == "cold_start" and len(r.json()["items"]) == 3


def test_impressions_logged_and_observed(env) -> None:
    client, service, log = env
    rid = client.get("/v1/feed", params={"user_id": "u7", "k": 4}).json()["request_id"]
    assert client.app.state.impression_writer.flush(5.0)
    imps = [r.event for r in log.read()]
    assert [e.event_id for e in imps] == [f"{rid}:{k}" for k in range(1, 5)]
    assert all(e.kind is EventKind.IMPRESSION and e.user_id == "u7" and e.request_id == rid for e in imps)
    assert [e.position for e in imps] == [0, 1, 2, 3] and all(e.propensity == 1.0 for e in imps)  # the service's per-slot propensity
    assert [e.event_id for e in service.observed] == [e.event_id for e in imps]


def test_a_handed_over_feed_is_logged_by_the_worker_that_sends_it_not_by_the_one_that_computed_it(env) -> None:
    """serving/offload.py: the peer computes and records the feed in its own state but does
    not log it (its answer may come too late to be shown); the worker that sends the body to
    the client logs it, stamped with the time the request arrived there, and records it.
    (One app plays both workers here: each side's calls are checked apart.)"""
    from feedrank.serving.fastfeed import FeedFastPath

    client, service, log = env
    fast = next(m for m in client.app.user_middleware if m.cls is FeedFastPath)
    body = fast.kwargs["feed_for_peer"]("u7", 3, False, None, "rid-peer", ("n40", "n41"))  # the peer's side
    assert [it["item_id"] for it in json.loads(body)["items"]] == ["n0", "n1", "n2"]
    assert service.requests[-1].also_seen == ("n40", "n41")  # what the sender showed the user: left out there
    assert client.app.state.impression_writer.flush(5.0)
    assert list(log.read()) == []  # computed, not logged
    assert [e.event_id for e in service.observed] == [f"rid-peer:{k}" for k in range(1, 4)]  # but recorded there
    service.observed.clear()
    arrived = NOW - 0.25
    fast.kwargs["log_handed_over"]("u7", "rid-peer", body, arrived)  # the sender's side, about to answer
    assert client.app.state.impression_writer.flush(5.0)
    imps = [r.event for r in log.read()]
    assert [e.event_id for e in imps] == [f"rid-peer:{k}" for k in range(1, 4)]
    assert [e.item_id for e in imps] == ["n0", "n1", "n2"] and [e.position for e in imps] == [0, 1, 2]
    assert all(e.kind is EventKind.IMPRESSION and e.user_id == "u7" and e.propensity == 1.0 for e in imps)
    assert all(e.ts == arrived for e in imps)
    assert [e.event_id for e in service.observed] == [e.event_id for e in imps]


def test_metrics_after_a_request(env) -> None:
    client, _, _ = env
    client.get("/v1/feed", params={"user_id": "u1", "k": 3})
    client.get("/v1/feed", params={"user_id": "x1", "k": 3})
    text = client.get("/metrics").text
    for s in STAGES:
        assert f'feedrank_stage_latency_seconds_count{{stage="{s}"}} 2.0' in text
    assert 'feedrank_feed_requests_total{tier="full"} 1.0' in text
    assert 'feedrank_feed_requests_total{tier="cold_start"} 1.0' in text
    assert 'feedrank_request_latency_seconds_count{endpoint="/v1/feed"} 2.0' in text
    assert 'feedrank_model_version_info{version="fake-v1"} 1.0' in text
    assert 'feedrank_events_total{result="accepted"} 0.0' in text
    assert "feedrank_impressions_total" in text


def test_many_apps_in_one_process(tmp_path: Path) -> None:
    for i in range(3):
        with EventLog(tmp_path / str(i)) as log:
            app = create_app(FakeService(), log, ServingConfig(), PipelineConfig())
            with TestClient(app) as c:
                assert c.get("/healthz").status_code == 200


def test_events_mixed_batch(env) -> None:
    client, service, log = env
    assert client.post("/v1/events", json={"events": [click("dup")]}).status_code == 202
    batch = [
        click("ok-1"),
        click("bad-kind", kind="purchase"),
        "not an object",
        click("unknown-item", item_id="nope"),
        click("dup"),
        click("ok-2", kind="dwell", dwell_ms=1200.0),
        click("ok-1"),
        click("nan-dwell", kind="dwell", dwell_ms=float("nan")),
    ]
    # json.dumps writes NaN as a bare literal (not strict JSON): only that event is rejected
    raw = json.dumps({"events": batch})
    assert "NaN" in raw
    r = client.post("/v1/events", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert sorted(body["duplicates"]) == ["dup", "ok-1"]
    errs = {e["index"]: e for e in body["errors"]}
    assert set(errs) == {1, 2, 3, 7}
    assert errs[1]["event_id"] == "bad-kind" and errs[1]["problems"][0].startswith("kind:")
    assert errs[2]["event_id"] is None and errs[2]["problems"][0].startswith("event:")
    assert errs[3]["problems"] == ["item_id: unknown item 'nope'"]
    assert errs[7]["event_id"] == "nan-dwell" and errs[7]["problems"][0].startswith("dwell_ms:")
    # durable before the 202: readable straight away, in order
    stored = [r.event for r in log.read()]
    assert [e.event_id for e in stored] == ["dup", "ok-1", "ok-2"]
    assert stored[2].kind is EventKind.DWELL and stored[2].dwell_ms == 1200.0
    assert [e.event_id for e in service.observed] == ["dup", "ok-1", "ok-2"]
    text = client.get("/metrics").text
    assert 'feedrank_events_total{result="accepted"} 3.0' in text
    assert 'feedrank_events_total{result="duplicate"} 2.0' in text
    assert 'feedrank_events_total{result="rejected"} 4.0' in text


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"evnts": []}', "events: required"),
        (b'{"events": {"a": 1}}', "expected a list"),
    ],
)
def test_events_malformed_body_is_422(env, content: bytes, needle: str) -> None:
    client, _, _ = env
    r = client.post("/v1/events", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert needle in r.text and "request_id" in r.json()


def test_events_too_many_is_413(env) -> None:
    client, _, log = env
    r = client.post("/v1/events", json={"events": [click(f"e{i}") for i in range(11)]})
    assert r.status_code == 413 and "at most 10" in r.json()["detail"]
    assert len(log) == 0


def test_items_and_404(env) -> None:
    client, _, _ = env
    r = client.get("/v1/items/n2")
    assert r.status_code == 200 and r.json()["title"] == "Title 2"
    r = client.get("/v1/items/missing")
    assert r.status_code == 404 and "missing" in r.json()["detail"] and r.json()["request_id"]


def test_unhandled_error_is_500_with_request_id(env, caplog: pytest.LogCaptureFixture) -> None:
    client, _, _ = env
    with caplog.at_level("ERROR", logger="feedrank.serving"):
        r = client.get("/v1/feed", params={"user_id": "boom"}, headers={"X-Request-Id": "req-42"})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error", "error": "RuntimeError", "request_id": "req-42"}
    rec = next(rec for rec in caplog.records if rec.name == "feedrank.serving")
    assert rec.request_id == "req-42" and rec.path == "/v1/feed"


def test_health_and_readiness(env) -> None:
    client, service, log = env
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["model_version"] == "fake-v1"
    service.version = ""
    r = client.get("/readyz")
    assert r.status_code == 503 and "service: no model loaded" in r.json()["problems"]
    service.version = "fake-v1"
    log.close()
    r = client.get("/readyz")
    assert r.status_code == 503 and any("event log" in p for p in r.json()["problems"])


def test_openapi_lists_endpoints(env) -> None:
    client, _, _ = env
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/feed", "/v1/events", "/v1/items/{item_id}", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_write_endpoints_need_the_api_key_when_configured(tmp_path):
    import dataclasses

    from feedrank.config import PipelineConfig, ServingConfig
    from feedrank.data.eventlog import EventLog
    from feedrank.serving.app import create_app

    log = EventLog(tmp_path / "events")
    app = create_app(FakeService(), log, dataclasses.replace(ServingConfig(), api_key="s3cret"), PipelineConfig())
    ev = {"events": [{"event_id": "k1", "ts": time.time(), "user_id": "u1", "item_id": "i1", "kind": "click"}]}
    with TestClient(app) as client:
        assert client.post("/v1/events", json=ev).status_code == 401
        assert "missing API key" in client.post("/v1/events", json=ev).json()["detail"]
        assert client.post("/v1/events", json=ev, headers={"X-API-Key": "nope"}).status_code == 401
        assert client.post("/v1/events", json=ev, headers={"X-API-Key": "s3cret"}).status_code == 202
        assert client.post("/v1/events", json=ev, headers={"Authorization": "Bearer s3cret"}).status_code == 202
        assert client.get("/v1/feed", params={"user_id": "u1", "k": 3}).status_code == 200  # reads stay open
    log.close()
