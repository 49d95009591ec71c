"""The HTTP service: ``create_app(service, event_log, cfg, pipeline_cfg) -> FastAPI``.

Endpoints (OpenAPI at ``/docs``; details and examples in ``docs/api.md``):

    GET  /v1/feed?user_id=&k=    a ranked feed; impressions logged in the background
    POST /v1/events              client events, validated, fsync'd before the 202     (serving/ingest.py)
    POST /v1/items               create or update items: validated, fsync'd, retrievable at once
                                 (on the other workers within serving.item_sync_s: serving/item_sync.py)
    GET  /v1/items/{item_id}     item metadata (404 when unknown)
    GET  /healthz                the process is alive
    GET  /readyz                 model loaded, event log writable, every worker started (503 otherwise)
    GET  /metrics                Prometheus text: this app's registry, or the sum over every
                                 worker process in multiprocess mode (serving/metrics.py)
    GET  /dashboard              the read-only dashboard (serving/dashboard.py)

Only this package maps errors to HTTP: SchemaError -> 422, NotFound -> 404, anything
else -> 500 with the request id in the body and a structured log line. The shared HTTP
plumbing (request ids, JSON bodies, the API key, the feed body) is in serving/http.py.

While the app runs, a probe timer on the event loop (every 25 ms) records how late it
fires into ``pipeline.degrade.LOOP_LAG``: the queue delay the degradation ladder adds to
the pipeline's own latency (``probe_loop_lag``). Server-logged impressions are batched
for up to ``serving.impression_linger_ms`` per append + fsync (``data/impressions.py``).

Every reader inside the app sees every worker's events: the real-time counters'
consumer and the dashboard's A/B figures read all partitions of the events folder
(``data.partitions.PartitionedLog``), not only this worker's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import orjson
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from feedrank.config import PipelineConfig, ServingConfig
from feedrank.data.impressions import ImpressionWriter
from feedrank.errors import NotFound, SchemaError
from feedrank.pipeline.degrade import LOOP_LAG, QueueDelay
from feedrank.serving.heap import freeze_loaded
from feedrank.pipeline.protocol import FeedService
from feedrank.serving.balance import worker_board
from feedrank.serving.fastfeed import FeedFastPath, Foreground
from feedrank.serving.http import JSON, RequestContext, feed_body, json_response, key_guard, request_id, valid_request_id
from feedrank.serving.ingest import ITEM_LOG, ingest_router
from feedrank.serving.item_sync import ItemSync
from feedrank.serving.metrics import ServingMetrics
from feedrank.types import Event, EventKind, FeedRequest, FeedResponse

log = logging.getLogger("feedrank.serving")

LAG_PROBE_S = 0.025  # the event-loop lag probe's period (the ladder's queue-delay signal)


def events_source(event_log: Any, events_root: Path, partition: str) -> Any:
    """What this process's readers consume: for the embedded log, every partition of
    ``events_root`` (this worker's own through its open writer); a shared log (Redis
    Streams) is already every worker's."""
    from feedrank.data.eventlog import EventLog
    from feedrank.data.partitions import PartitionedLog

    if isinstance(event_log, EventLog):
        return PartitionedLog(events_root, own={partition: event_log})
    return event_log


def item_log_paths(events_root: Path, partition: str) -> list[Path]:
    """This worker's item log first, then those of the events folder and every other partition."""
    own = (events_root / partition if partition else events_root) / ITEM_LOG
    others = [events_root / ITEM_LOG] + sorted(p / ITEM_LOG for p in events_root.glob("w*") if p.is_dir())
    return [own] + [p for p in others if p != own]


def _controllers(service: Any) -> list[Any]:
    """The degradation-ladder controllers answering now: the served model's (a model
    manager's active one; under an experiment router, the model it routes to) and those of
    the versions experiment arms pin. Settings views share their model's controller."""
    base = getattr(service, "base", service)  # ExperimentRouter wraps the service it routes
    models = [getattr(base, "active", base), *getattr(service, "pinned_models", lambda: [])()]
    out: list[Any] = []
    for m in models:
        c = getattr(m, "controller", None)
        if c is not None and all(c is not x for x in out):
            out.append(c)
    return out


async def probe_loop_lag(controllers: Callable[[], list[Any]], interval_s: float = LAG_PROBE_S,
                         lag: QueueDelay = LOOP_LAG, histogram: Any = None) -> None:
    """Until cancelled: sleep ``interval_s`` on the event loop, record how late it woke up
    (``lag``, read by the ladder: pipeline/degrade.py), and let each controller re-decide.
    The feed pipeline runs inline on the loop, so the lateness is how long a request that
    arrives now waits before its pipeline starts."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval_s)
        late_s = loop.time() - t0 - interval_s
        lag.observe(late_s * 1000.0)
        if histogram is not None:  # feedrank_loop_lag_seconds: the distribution of stalls
            histogram.observe(max(late_s, 0.0))
        try:
            for c in controllers():
                c.tick()
        except Exception:  # never let the probe die: the ladder would go blind to queueing
            log.exception("loop-lag probe: a controller failed")


def create_app(
    service: FeedService,
    event_log: EventLog,
    cfg: ServingConfig,
    pipeline_cfg: PipelineConfig,
    *,
    impression_writer: ImpressionWriter | None = None,
    registry: CollectorRegistry | None = None,
    live: Any = None,
    partition: str = "",
) -> FastAPI:
    """Build the app around a loaded ``service`` and an open, writable ``event_log``.

    ``service`` may be swapped behind a facade (model manager); the app reads
    ``service.model_version`` per request. An ``ImpressionWriter`` on ``event_log`` is
    created unless one is given; the app's shutdown closes (flushes) it. The caller
    owns ``event_log`` and closes it after the app has stopped.

    ``partition``: this worker's partition of the embedded event log (serving/workers.py;
    ``event_log.root`` is then ``<events>/<partition>``), "" for a single process.

    ``app.state`` holds service, event_log, events_root, events_source, impression_writer,
    metrics, registry, item_sync.
    """
    metrics = ServingMetrics(registry)
    events_root = event_log.root.parent if partition else event_log.root
    source = events_source(event_log, events_root, partition)
    writer = impression_writer if impression_writer is not None else ImpressionWriter(
        event_log, linger_s=cfg.impression_linger_ms / 1000.0)
    metrics.watch_writer(writer.stats)
    if live is not None:  # features.live.LiveFeatures: its consumer runs while the app does
        from feedrank.serving.live_features import LiveCollector

        metrics.watch(LiveCollector(live))
    metrics.track_version(lambda: service.model_version)
    default_k = min(20, cfg.max_k)
    inline = pipeline_cfg.rank_batch_wait_ms <= 0  # the feed pipeline on the event loop (serving/fastfeed.py)
    foreground = Foreground()  # set while the loop runs a feed; the live consumer waits on it
    # every worker's item logs: replayed by ingest_router, then tailed while the app runs
    items = ItemSync(service, lambda: item_log_paths(events_root, partition), partition,
                     on_indexed=lambda n: metrics.events.labels(result="item_synced").inc(n))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("serving model %s", service.model_version)
        freeze_loaded("start")  # the loaded model out of the cyclic GC's full collections (serving/heap.py)
        if live is not None:
            live.start(source, event_log.root / "consumers" / "realtime.npz",
                       yield_to=foreground.busy if cfg.consumer_yield and inline else None)
        items.start(cfg.item_sync_s)
        probe = asyncio.create_task(probe_loop_lag(lambda: _controllers(service), histogram=metrics.loop_lag),
                                    name="loop-lag-probe")
        yield
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        await run_in_threadpool(items.stop)
        if live is not None:  # before the caller closes the event log
            await run_in_threadpool(live.stop)
        flushed = await run_in_threadpool(writer.close)
        if not flushed:
            log.error("impression writer did not flush everything on shutdown: %s", writer.stats())
        close = getattr(source, "close", None)
        if source is not event_log and callable(close):
            close()
        metrics.close()

    app = FastAPI(
        title="feedrank",
        version=_package_version(),
        description="News-feed recommendations and event ingestion. See docs/api.md.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.event_log = event_log
    app.state.events_root = events_root
    app.state.events_source = source
    app.state.impression_writer = writer
    app.state.metrics = metrics
    app.state.registry = metrics.registry
    app.state.item_sync = items
    app.add_middleware(RequestContext, metrics=metrics)

    # ------------------------------------------------------------------ error mapping

    @app.exception_handler(SchemaError)
    async def _schema_error(request: Request, exc: SchemaError) -> Response:
        msg = str(exc).split("\n", 1)[0]
        return json_response({"detail": msg, "problems": exc.problems, "request_id": request_id(request)}, 422)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return json_response({"detail": str(exc), "request_id": request_id(request)}, 404)

    # ------------------------------------------------------------------ auth
    api_key = os.environ.get("FEEDRANK_API_KEY") or cfg.api_key
    require_key = key_guard(api_key)

    # ------------------------------------------------------------------ feed

    def _impressions(user_id: str, rid: str, now: float, arm: str | None,
                     items: list[tuple[str, int, float | None]]) -> list[Event]:
        """The impression events of one served feed: (item id, rank, propensity) per item."""
        return [Event(event_id=f"{rid}:{rank}", ts=now, user_id=user_id, item_id=item_id, kind=EventKind.IMPRESSION,
                      position=rank - 1, request_id=rid, propensity=propensity, arm=arm)
                for item_id, rank, propensity in items]

    def _log_impressions(resp: FeedResponse, user_id: str, rid: str, now: float, write: bool = True) -> None:
        _log(_impressions(user_id, rid, now, resp.arm, [(it.item_id, it.rank, it.propensity) for it in resp.items]), write)

    def _log(impressions: list[Event], write: bool = True) -> None:
        """Write one served feed's impressions to the log (``write``) and fold them into this
        worker's state (seen items, engagement counters)."""
        if not impressions:
            return
        if write and not writer.submit(impressions):
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
        return Response(feed_bytes(user_id, k, explain, x_deadline_ms, request_id(request)), media_type=JSON)

    def feed_bytes(user_id: str, k: int, explain: bool, x_deadline_ms: float | None, rid: str, log: bool = True,
                   also_seen: tuple[str, ...] = ()) -> bytes:
        """The feed JSON for validated inputs: shared by the route and ``FeedFastPath``.
        ``log=False``: a feed computed for another worker, which logs it once it has it
        (``_log_handed_over``): recorded in this worker's state (the user's next feed from here
        does not repeat it), not written to the log. ``also_seen``: item ids the user was shown
        by that worker, left out as this worker's own seen items are."""
        now = time.time()
        deadline = pipeline_cfg.deadline_ms if x_deadline_ms is None else min(x_deadline_ms, pipeline_cfg.deadline_ms)
        resp = service.recommend(FeedRequest(user_id=user_id, k=k, now=now, deadline_ms=deadline, request_id=rid,
                                             explain=explain, also_seen=also_seen))
        metrics.observe_feed(resp.timings_ms, str(resp.tier), len(resp.items))
        _log_impressions(resp, user_id, resp.request_id or rid, now, write=log)
        return orjson.dumps(feed_body(resp))

    def _log_handed_over(user_id: str, rid: str, body: bytes, arrived: float) -> None:
        """A feed another worker computed for a request that reached this one at ``arrived``
        (epoch s; serving/offload.py), about to be sent to the client: its impressions are
        logged here, in this worker's partition, and recorded in this worker's state (the user's
        next feed from here does not repeat them). The peer records it in its own state but
        writes nothing to the log: it cannot know whether this worker still waits for its
        answer, and a feed that came too late is computed here again and never shown."""
        data = orjson.loads(body)
        rid = str(data.get("request_id") or rid)
        _log(_impressions(user_id, rid, arrived, data.get("arm"),
                          [(str(it["item_id"]), int(it["rank"]), it.get("propensity")) for it in data.get("items") or ()]))

    # the hot endpoint's direct ASGI path (serving/fastfeed.py); anything it does not accept
    # at a glance falls through to the route above. Inline unless micro-batching needs threads.
    app.add_middleware(FeedFastPath, feed=feed_bytes, metrics=metrics, max_k=cfg.max_k, default_k=default_k,
                       valid_request_id=valid_request_id, inline=inline, foreground=foreground,
                       deadline_ms=pipeline_cfg.deadline_ms, log_handed_over=_log_handed_over,
                       feed_for_peer=lambda u, k, e, d, r, seen: feed_bytes(u, k, e, d, r, log=False, also_seen=seen),
                       seen_of=getattr(service, "seen_items", None))

    # ------------------------------------------------------------------ events, items
    app.include_router(ingest_router(service, event_log, metrics, cfg.max_events_per_request, require_key, items))

    # ------------------------------------------------------------------ operations

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

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
        board = worker_board()  # several workers: ready once every one has started (serving/balance.py)
        board_problem = None if board is None else board.readiness_problem()
        if board_problem:
            problems.append(board_problem)
        if problems:
            return json_response({"status": "not ready", "problems": problems, "model_version": version}, 503)
        return json_response({"status": "ready", "model_version": version})

    @app.get("/metrics", summary="Prometheus metrics")
    def prom_metrics() -> Response:
        body, content_type = metrics.exposition()  # reads service.model_version
        return Response(body, media_type=content_type)

    from feedrank.serving.dashboard import dashboard_router  # read-only web dashboard at /dashboard

    app.include_router(dashboard_router(app, api_key=api_key))
    return app


def _package_version() -> str:
    try:
        from feedrank import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"


__all__ = ["create_app"]
