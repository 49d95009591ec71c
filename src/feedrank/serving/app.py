"""The HTTP service: ``create_app(service, event_log, cfg, pipeline_cfg) -> FastAPI``.

Endpoints (OpenAPI at ``/docs``; details and examples in ``docs/api.md``):

    GET  /v1/feed?user_id=&k=    a ranked feed; impressions logged in the background
    POST /v1/events              client events, validated, fsync'd before the 202
    POST /v1/items               create or update items: validated, fsync'd, retrievable at once
    GET  /v1/items/{item_id}     item metadata (404 when unknown)
    GET  /healthz                the process is alive
    GET  /readyz                 model loaded and event log writable (503 otherwise)
    GET  /metrics                Prometheus text (this app's own registry)

Only this package maps errors to HTTP: SchemaError -> 422, NotFound -> 404, anything
else -> 500 with the request id in the body and a structured log line.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import orjson
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedrank.config import PipelineConfig, ServingConfig
from feedrank.data.eventlog import EventLog
from feedrank.data.impressions import ImpressionWriter
from feedrank.data.events import MAX_EVENT_ID_LEN, parse_event
from feedrank.errors import NotFound, SchemaError
from feedrank.pipeline.protocol import FeedService
from feedrank.serving.fastfeed import FeedFastPath
from feedrank.serving.logs import request_id_var
from feedrank.serving.metrics import ServingMetrics
from feedrank.types import Event, EventKind, FeedRequest, FeedResponse

log = logging.getLogger("feedrank.serving")

JSON = "application/json"
# A request id becomes part of impression event ids ("<request_id>:<rank>").
MAX_REQUEST_ID_LEN = MAX_EVENT_ID_LEN - 8
BYTES_PER_EVENT = 2048  # body size budget per event for POST /v1/events
_TOP_LEVEL_KEYS = ("events",)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def _valid_request_id(rid: str) -> bool:
    return 0 < len(rid) <= MAX_REQUEST_ID_LEN and rid.isascii() and rid.isprintable() and " " not in rid


class _RequestContext:
    """Pure ASGI middleware: request id (X-Request-Id or a fresh uuid4 hex) in
    ``request.state.request_id``, the logging context and the response header; request
    latency and status metrics; any unhandled exception becomes a logged 500."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                rid = value.decode("latin-1")
                break
        if rid is not None and not _valid_request_id(rid):
            body = {
                "detail": f"X-Request-Id must be 1..{MAX_REQUEST_ID_LEN} printable ASCII characters without spaces",
                "problems": ["header X-Request-Id: invalid"],
            }
            await _json(body, 422)(scope, receive, send)
            return
        rid = rid or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.exception(
                "unhandled error: %s", type(exc).__name__,
                extra={"request_id": rid, "path": scope.get("path"), "method": scope.get("method")},
            )
            if started:
                raise
            status = 500
            body = {"detail": "internal server error", "error": type(exc).__name__, "request_id": rid}
            await _json(body, 500, {"x-request-id": rid})(scope, receive, send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
            self.metrics.responses.labels(endpoint=endpoint, status=str(status)).inc()
            request_id_var.reset(token)


def _loads_lenient(body: bytes) -> Any:
    """orjson, falling back to the stdlib parser for NaN/Infinity/1e999 literals (which
    some clients emit) so that such an event is rejected alone, not the whole batch."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first = exc
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise SchemaError("request body is not valid JSON", [f"body: {first}"]) from None


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


def _feed_body(resp: FeedResponse) -> dict[str, Any]:
    return {
        "request_id": resp.request_id,
        "user_id": resp.user_id,
        "model_version": resp.model_version,
        "tier": resp.tier,
        "arm": resp.arm,
        "features": resp.features,
        "timings_ms": dict(resp.timings_ms),
        "items": [
            {
                "item_id": it.item_id,
                "score": it.score,
                "rank": it.rank,
                "source": it.source,
                "title": it.title,
                "category": it.category,
                "propensity": it.propensity,
                **({"explain": [{"feature": f, "contribution": c} for f, c in it.explanation]} if it.explanation else {}),
            }
            for it in resp.items
        ],
    }


def create_app(
    service: FeedService,
    event_log: EventLog,
    cfg: ServingConfig,
    pipeline_cfg: PipelineConfig,
    *,
    impression_writer: ImpressionWriter | None = None,
    registry: CollectorRegistry | None = None,
    live: Any = None,
) -> FastAPI:
    """Build the app around a loaded ``service`` and an open, writable ``event_log``.

    ``service`` may be swapped behind a facade (model manager); the app reads
    ``service.model_version`` per request. An ``ImpressionWriter`` on ``event_log`` is
    created unless one is given; the app's shutdown closes (flushes) it. The caller
    owns ``event_log`` and closes it after the app has stopped.

    ``app.state`` holds service, event_log, impression_writer, metrics, registry.
    """
    metrics = ServingMetrics(registry)
    writer = impression_writer if impression_writer is not None else ImpressionWriter(event_log)
    metrics.watch_writer(writer.stats)
    if live is not None:  # features.live.LiveFeatures: its consumer runs while the app does
        from feedrank.serving.live_features import LiveCollector

        metrics.registry.register(LiveCollector(live))
    default_k = min(20, cfg.max_k)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("serving model %s", service.model_version)
        if live is not None:
            live.start(event_log, event_log.root / "consumers" / "realtime.npz")
        yield
        if live is not None:  # before the caller closes the event log
            await run_in_threadpool(live.stop)
        flushed = await run_in_threadpool(writer.close)
        if not flushed:
            log.error("impression writer did not flush everything on shutdown: %s", writer.stats())

    app = FastAPI(
        title="feedrank",
        version=_package_version(),
        description="News-feed recommendations and event ingestion. See docs/api.md.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.event_log = event_log
    app.state.impression_writer = writer
    app.state.metrics = metrics
    app.state.registry = metrics.registry
    app.add_middleware(_RequestContext, metrics=metrics)

    # ------------------------------------------------------------------ error mapping

    @app.exception_handler(SchemaError)
    async def _schema_error(request: Request, exc: SchemaError) -> Response:
        msg = str(exc).split("\n", 1)[0]
        return _json({"detail": msg, "problems": exc.problems, "request_id": _rid(request)}, 422)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return _json({"detail": str(exc), "request_id": _rid(request)}, 404)

    # ------------------------------------------------------------------ auth
    api_key = os.environ.get("FEEDRANK_API_KEY") or cfg.api_key

    def _require_key(request: Request) -> None:
        """Write endpoints need the configured key (none configured: open)."""
        if not api_key:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None:
            raise HTTPException(401, "missing API key: send it as X-API-Key or Authorization: Bearer")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "wrong API key")

    # ------------------------------------------------------------------ feed

    def _log_impressions(resp: FeedResponse, user_id: str, rid: str, now: float) -> None:
        impressions = [
            Event(
                event_id=f"{rid}:{it.rank}",
                ts=now,
                user_id=user_id,
                item_id=it.item_id,
                kind=EventKind.IMPRESSION,
                position=it.rank - 1,
                request_id=rid,
                propensity=it.propensity,
                arm=resp.arm,
            )
            for it in resp.items
        ]
        if not impressions:
            return
        if not writer.submit(impressions):
            log.warning("impression writer full or closed: dropped %d impressions", len(impressions))
        try:
            service.observe(impressions)
        except Exception:
            log.exception("service.observe failed for %d impressions", len(impressions))

    @app.get(
        "/v1/feed",
        summary="A ranked feed for one user",
        responses={
            200: {
                "description": "The feed",
                "content": {
                    JSON: {
                        "example": {
                            "request_id": "5f0c...",
                            "user_id": "u42",
                            "model_version": "2024-05-01-a1b2c3",
                            "tier": "full",
                            "timings_ms": {"retrieve": 3.1, "rank": 12.4, "rerank": 0.6},
                            "items": [
                                {"item_id": "n17", "score": 0.31, "rank": 1, "source": "ann",
                                 "title": "...", "category": "sports"}
                            ],
                        }
                    }
                },
            }
        },
    )
    def get_feed(
        request: Request,
        user_id: str = Query(..., min_length=1, max_length=256, description="Who the feed is for (unknown users get a cold-start feed)"),
        k: int = Query(default_k, ge=1, le=cfg.max_k, description=f"Number of items, 1..{cfg.max_k}"),
        explain: bool = Query(False, description="Add each item's main feature contributions to its score"),
        x_deadline_ms: float | None = Header(
            None, gt=0, allow_inf_nan=False, description=f"Cap on the deadline in ms (never above {pipeline_cfg.deadline_ms})"
        ),
    ) -> Response:
        if not user_id.strip():
            raise SchemaError("invalid request", ["user_id: must be a non-empty string"])
        return Response(feed_bytes(user_id, k, explain, x_deadline_ms, _rid(request)), media_type=JSON)

    def feed_bytes(user_id: str, k: int, explain: bool, x_deadline_ms: float | None, rid: str) -> bytes:
        """The feed JSON for validated inputs: shared by the route and ``FeedFastPath``."""
        now = time.time()
        deadline = pipeline_cfg.deadline_ms if x_deadline_ms is None else min(x_deadline_ms, pipeline_cfg.deadline_ms)
        resp = service.recommend(FeedRequest(user_id=user_id, k=k, now=now, deadline_ms=deadline, request_id=rid,
                                             explain=explain))
        metrics.observe_feed(resp.timings_ms, str(resp.tier), len(resp.items))
        _log_impressions(resp, user_id, resp.request_id or rid, now)
        return orjson.dumps(_feed_body(resp))

    # the hot endpoint's direct ASGI path (serving/fastfeed.py); anything it does not accept
    # at a glance falls through to the route above. Inline unless micro-batching needs threads.
    app.add_middleware(FeedFastPath, feed=feed_bytes, metrics=metrics, max_k=cfg.max_k, default_k=default_k,
                       valid_request_id=_valid_request_id, inline=pipeline_cfg.rank_batch_wait_ms <= 0)

    # ------------------------------------------------------------------ events

    max_events = cfg.max_events_per_request
    max_body = max_events * BYTES_PER_EVENT + 65_536

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

    @app.post(
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
        _require_key(request)
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
        body = b"".join(chunks)
        payload = _loads_lenient(body)
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
        return _json(result, 202)

    # ------------------------------------------------------------------ items

    item_log = ItemLog(event_log.root / "items.jsonl")
    add_items = getattr(service, "add_items", None)
    if callable(add_items):
        replayed = item_log.read()
        if replayed:
            add_items(replayed)
            log.info("replayed %d items from %s", len(replayed), item_log.path)

    @app.post(
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
        _require_key(request)
        if not callable(add_items):
            raise HTTPException(501, "this service does not accept item adds")
        body = await request.body()
        if len(body) > max_body:
            raise HTTPException(413, f"body too large: more than {max_body} bytes")
        payload = _loads_lenient(body)
        records = parse_items(payload, max_events)
        await run_in_threadpool(item_log.append, records)   # durable before it is served
        result = await run_in_threadpool(add_items, records)
        metrics.events.labels(result="item_added").inc(len(records))
        return _json(result, 201)

    @app.get("/v1/items/{item_id}", summary="Item metadata")
    def get_item(item_id: str) -> Response:
        item = service.get_item(item_id)
        if item is None:
            raise NotFound(f"unknown item {item_id!r}")
        return _json(
            {
                "item_id": item.item_id,
                "title": item.title,
                "category": item.category,
                "subcategory": item.subcategory,
                "creator": item.creator,
                "published_at": item.published_at,
            }
        )

    # ------------------------------------------------------------------ operations

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Readiness: model loaded and event log writable")
    def readyz() -> Response:
        problems: list[str] = []
        version = None
        try:
            version = service.model_version
            ready = getattr(service, "ready", None)
            if callable(ready) and not ready():
                problems.append("service: not ready")
            elif not version:
                problems.append("service: no model loaded")
        except Exception as exc:
            problems.append(f"service: {type(exc).__name__}: {exc}")
        if not event_log.writable():
            problems.append(f"event log {event_log.root}: not writable")
        if not writer.alive():
            problems.append("impression writer: not running")
        if problems:
            return _json({"status": "not ready", "problems": problems, "model_version": version}, 503)
        return _json({"status": "ready", "model_version": version})

    @app.get("/metrics", summary="Prometheus metrics")
    def prom_metrics() -> Response:
        try:
            metrics.set_model_version(service.model_version)
        except Exception:
            log.exception("could not read service.model_version")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    from feedrank.serving.dashboard import dashboard_router  # read-only web dashboard at /dashboard

    app.include_router(dashboard_router(app, api_key=api_key))
    return app


_ITEM_STR_FIELDS = {"item_id": 256, "title": 1000, "category": 128, "subcategory": 128, "creator": 256}
_ITEM_NUM_FIELDS = ("published_at", "expires_at")


def parse_items(payload: Any, max_items: int) -> list[dict[str, Any]]:
    """``{"items": [...]}`` -> validated item dicts; SchemaError listing every problem."""
    import math

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


class ItemLog:
    """Append-only JSON lines of accepted item adds, fsync'd; replayed on start-up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, records: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        with self._lock, open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                log.warning("skipping a torn line in %s", self.path)
        return out


def _package_version() -> str:
    try:
        from feedrank import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"


__all__ = ["create_app"]
