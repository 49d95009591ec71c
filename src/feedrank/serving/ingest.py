"""The write endpoints: ``POST /v1/events`` (client events, fsync'd before the 202) and
``POST /v1/items`` / ``GET /v1/items/{item_id}`` (items added live, durable in
``items.jsonl`` beside the event log and replayed on start-up).

With several workers (serving/workers.py) each writes ``items.jsonl`` in its own event-log
partition and stamps every record with ``logged_at``; a worker replays the item logs of
*every* partition on start-up and, while it runs, tails them every ``serving.item_sync_s``
seconds (serving/item_sync.py), so an item posted to any worker is retrievable on every
worker within about that long; the newest record of an id wins.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from feedrank.data.events import parse_event
from feedrank.errors import NotFound, SchemaError
from feedrank.pipeline.protocol import FeedService
from feedrank.serving.http import JSON, json_response, loads_lenient
from feedrank.serving.item_sync import ITEM_LOG, ItemLog, ItemSync, replay_items
from feedrank.serving.metrics import ServingMetrics
from feedrank.types import Event

log = logging.getLogger("feedrank.serving")

__all__ = ["ITEM_LOG", "ItemLog", "ItemSync", "ingest_router", "max_body_bytes", "parse_items", "replay_items"]

BYTES_PER_EVENT = 2048  # body size budget per event for POST /v1/events
WORKER_HEADER = "X-Feedrank-Worker"  # on /v1/items responses: the worker partition that answered
_TOP_LEVEL_KEYS = ("events",)
_ITEM_STR_FIELDS = {"item_id": 256, "title": 1000, "category": 128, "subcategory": 128, "creator": 256}
_ITEM_NUM_FIELDS = ("published_at", "expires_at")


def max_body_bytes(max_events: int) -> int:
    return max_events * BYTES_PER_EVENT + 65_536


def parse_items(payload: Any, max_items: int) -> list[dict[str, Any]]:
    """``{"items": [...]}`` -> validated item dicts; SchemaError listing every problem."""
    if not isinstance(payload, dict) or not isinstance(payload.get("items"), list) or set(payload) - {"items"}:
        raise SchemaError('request body must be {"items": [...]}', ["body: expected an object with one key, items (a list)"])
    items = payload["items"]
    if not items or len(items) > max_items:
        raise SchemaError("invalid items", [f"items: 1..{max_items} items per request, got {len(items)}"])
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            problems.append(f"items[{i}]: expected an object")
            continue
        rec: dict[str, Any] = {}
        for key in obj:
            if key not in _ITEM_STR_FIELDS and key not in _ITEM_NUM_FIELDS:
                problems.append(f"items[{i}].{str(key)[:64]}: unknown field")
        for key, limit in _ITEM_STR_FIELDS.items():
            v = obj.get(key)
            if v is None:
                if key == "item_id":
                    problems.append(f"items[{i}].item_id: required")
                continue
            if not isinstance(v, str) or not v.strip() or len(v) > limit or (key == "item_id" and not v.isprintable()):
                problems.append(f"items[{i}].{key}: expected a non-empty string of at most {limit} characters")
                continue
            rec[key] = v
        for key in _ITEM_NUM_FIELDS:
            v = obj.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                problems.append(f"items[{i}].{key}: expected epoch seconds (a finite number >= 0)")
                continue
            rec[key] = float(v)
        out.append(rec)
    if problems:
        raise SchemaError("invalid items; nothing was added", problems)
    return out


def ingest_router(service: FeedService, event_log: Any, metrics: ServingMetrics, max_events: int,
                  require_key: Callable[[Request], None], items: ItemSync) -> APIRouter:
    """Routes for ``POST /v1/events``, ``POST /v1/items`` and ``GET /v1/items/{item_id}``.
    ``items``: every partition's item logs (replayed now, when the service accepts item
    adds; the caller starts and stops its tailer with the app)."""
    router = APIRouter()
    max_body = max_body_bytes(max_events)

    def _ingest(raw_events: list[Any], now: float) -> dict[str, Any]:
        errors: list[dict[str, Any]] = []
        valid: list[Event] = []
        for i, obj in enumerate(raw_events):
            eid = obj.get("event_id") if isinstance(obj, dict) else None
            eid = eid if isinstance(eid, str) else None
            try:
                ev = parse_event(obj, now)
            except SchemaError as exc:
                errors.append({"index": i, "event_id": eid, "problems": exc.problems})
                continue
            if not service.has_item(ev.item_id):
                errors.append({"index": i, "event_id": eid, "problems": [f"item_id: unknown item {ev.item_id!r}"]})
                continue
            valid.append(ev)
        result = event_log.append(valid)  # durable (fsync'd) when this returns
        pending = set(result.accepted)
        fresh: list[Event] = []
        for ev in valid:  # the first occurrence of each id is the one written
            if ev.event_id in pending:
                pending.discard(ev.event_id)
                fresh.append(ev)
        metrics.events.labels(result="accepted").inc(len(result.accepted))
        metrics.events.labels(result="duplicate").inc(len(result.duplicates))
        metrics.events.labels(result="rejected").inc(len(errors))
        if fresh:
            try:
                service.observe(fresh)
            except Exception:
                log.exception("service.observe failed for %d accepted events (they are logged)", len(fresh))
        if errors:
            log.info("events batch: %d accepted, %d duplicate, %d rejected", len(result.accepted), len(result.duplicates), len(errors))
        return {"accepted": len(result.accepted), "duplicates": result.duplicates, "errors": errors}

    @router.post(
        "/v1/events",
        status_code=202,
        summary="Ingest client events (click, dwell, hide, impression)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["events"],
                            "properties": {"events": {"type": "array", "maxItems": max_events, "items": {"type": "object"}}},
                        },
                        "example": {
                            "events": [
                                {"event_id": "c-1", "ts": 1714000000.0, "user_id": "u42", "item_id": "n17",
                                 "kind": "click", "position": 0, "request_id": "5f0c..."}
                            ]
                        },
                    }
                },
            }
        },
        responses={
            202: {"description": "Valid events are durable; per-event errors listed",
                  "content": {JSON: {"example": {"accepted": 1, "duplicates": [], "errors": []}}}},
            413: {"description": "Too many events or body too large"},
            422: {"description": "Body is not JSON or not {\"events\": [...]}"},
        },
    )
    async def post_events(request: Request) -> Response:
        require_key(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise HTTPException(413, f"body too large: {declared} bytes, at most {max_body}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise HTTPException(413, f"body too large: more than {max_body} bytes")
            chunks.append(chunk)
        payload = loads_lenient(b"".join(chunks))
        if not isinstance(payload, dict):
            raise SchemaError(
                'request body must be an object {"events": [...]}',
                [f"body: expected an object, got {type(payload).__name__}"],
            )
        problems = [f"{str(k)[:64]}: unknown top-level field (allowed: events)" for k in payload if k not in _TOP_LEVEL_KEYS]
        events = payload.get("events")
        if "events" not in payload:
            problems.append("events: required")
        elif not isinstance(events, list):
            problems.append(f"events: expected a list, got {type(events).__name__}")
        if problems:
            raise SchemaError('request body must be {"events": [...]}', problems)
        assert isinstance(events, list)
        if len(events) > max_events:
            raise HTTPException(413, f"too many events: {len(events)} in one request, at most {max_events}; split the batch")
        result = await run_in_threadpool(_ingest, events, time.time())
        return json_response(result, 202)

    # ------------------------------------------------------------------ items
    items.replay()
    worker = {WORKER_HEADER: items.partition} if items.partition else {}

    @router.post(
        "/v1/items",
        status_code=201,
        summary="Create or update items (retrievable by the next feed request, no rebuild)",
        openapi_extra={"requestBody": {"required": True, "content": {JSON: {"example": {"items": [
            {"item_id": "n9001", "title": "Storm closes the harbour", "category": "weather", "subcategory": "storms",
             "creator": "c12", "published_at": 1714000000.0, "expires_at": 1714600000.0}]}}}}},
        responses={201: {"description": "Items are durable and indexed",
                         "content": {JSON: {"example": {"created": 1, "updated": 0}}}},
                   422: {"description": "Invalid body or items; nothing was added"}},
    )
    async def post_items(request: Request) -> Response:
        require_key(request)
        if not items.accepts_items:
            raise HTTPException(501, "this service does not accept item adds")
        body = await request.body()
        if len(body) > max_body:
            raise HTTPException(413, f"body too large: more than {max_body} bytes")
        records = parse_items(loads_lenient(body), max_events)
        result = await run_in_threadpool(items.accept, records)  # durable, then indexed here
        metrics.events.labels(result="item_added").inc(len(records))
        return json_response(result, 201, headers=worker)

    @router.get("/v1/items/{item_id}", summary="Item metadata")
    def get_item(item_id: str) -> Response:
        item = service.get_item(item_id)
        if item is None:
            raise NotFound(f"unknown item {item_id!r}")
        return json_response({"item_id": item.item_id, "title": item.title, "category": item.category,
                              "subcategory": item.subcategory, "creator": item.creator, "published_at": item.published_at},
                             headers=worker)

    return router
