"""HTTP plumbing shared by the app's routes (serving/app.py, serving/ingest.py, the
dashboard): JSON responses, the request-id middleware, lenient JSON bodies, the API-key
check and the one feed body both ``GET /v1/feed`` and the dashboard's preview send."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any, Callable

import orjson
from fastapi import HTTPException, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedrank.data.events import MAX_EVENT_ID_LEN
from feedrank.errors import SchemaError
from feedrank.serving.logs import request_id_var
from feedrank.serving.metrics import ServingMetrics
from feedrank.types import FeedResponse

log = logging.getLogger("feedrank.serving")

JSON = "application/json"
# A request id becomes part of impression event ids ("<request_id>:<rank>").
MAX_REQUEST_ID_LEN = MAX_EVENT_ID_LEN - 8
PREVIEW_EXPLAIN = 4  # feature contributions per item in the dashboard's preview


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def valid_request_id(rid: str) -> bool:
    return 0 < len(rid) <= MAX_REQUEST_ID_LEN and rid.isascii() and rid.isprintable() and " " not in rid


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


def feed_body(resp: FeedResponse, *, preview: bool = False) -> dict[str, Any]:
    """The JSON body of a feed. ``preview`` (the dashboard's, never logged): no request
    id; each item's creator and its top ``PREVIEW_EXPLAIN`` contributions; the stage
    funnel."""
    items = []
    for it in resp.items:
        item: dict[str, Any] = {"item_id": it.item_id, "score": it.score, "rank": it.rank, "source": it.source,
                                "title": it.title, "category": it.category, "propensity": it.propensity}
        if preview:
            item["creator"] = it.creator
            item["explain"] = [{"feature": f, "contribution": c} for f, c in it.explanation[:PREVIEW_EXPLAIN]]
        elif it.explanation:
            item["explain"] = [{"feature": f, "contribution": c} for f, c in it.explanation]
        items.append(item)
    body: dict[str, Any] = {} if preview else {"request_id": resp.request_id}
    body.update({"user_id": resp.user_id, "model_version": resp.model_version, "tier": resp.tier, "arm": resp.arm,
                 "features": resp.features, "timings_ms": dict(resp.timings_ms)})
    if preview:
        body["funnel"] = dict(getattr(resp, "funnel", {}) or {})
    body["items"] = items
    return body


def loads_lenient(body: bytes) -> Any:
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


def key_guard(api_key: str | None) -> Callable[[Request], None]:
    """A check for write endpoints: the configured key as X-API-Key or Authorization:
    Bearer (none configured: open). Raises HTTP 401."""

    def require_key(request: Request) -> None:
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

    return require_key


class RequestContext:
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
        if rid is not None and not valid_request_id(rid):
            body = {
                "detail": f"X-Request-Id must be 1..{MAX_REQUEST_ID_LEN} printable ASCII characters without spaces",
                "problems": ["header X-Request-Id: invalid"],
            }
            await json_response(body, 422)(scope, receive, send)
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
            await json_response(body, 500, {"x-request-id": rid})(scope, receive, send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
            self.metrics.responses.labels(endpoint=endpoint, status=str(status)).inc()
            request_id_var.reset(token)
