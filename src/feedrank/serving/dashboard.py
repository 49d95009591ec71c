"""The read-only web dashboard at ``/dashboard`` and its JSON endpoints.

    GET /dashboard                       the page (static/dashboard.{html,js,css})
    GET /dashboard/api/feed?user_id=&k=  a feed *preview*: recommend(explain=True), not logged,
                                         no impressions; items with source, score, explanation;
                                         the stage funnel (candidates per source -> ranked ->
                                         shown) and per-stage latency
    GET /dashboard/api/live              rps, p50/p99 feed latency, tier mix, events/s and
                                         counter lag over the last ~10 s, from the Prometheus
                                         metrics summed over every worker (sampled on each call)
    GET /dashboard/api/models            model version(s), registry versions, A/B arms with
                                         CTR from the event log (cached 15 s)
    GET /dashboard/api/report            the last evaluation report's summary (``feedrank report``)
    GET /dashboard/report                that report's HTML
    POST /dashboard/api/admin/report     admin: point the dashboard at another report
                                         (needs the API key, like every write endpoint)

The report is looked for at the admin-set path, then ``$FEEDRANK_REPORT``, then
``<events folder>/../report.html`` (where ``feedrank demo`` writes it).
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from collections import deque
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from feedrank.serving.http import feed_body
from feedrank.types import FeedRequest

WINDOW_S = 10.0
ARMS_TTL_S = 15.0
STATIC = ("dashboard.html", "dashboard.js", "dashboard.css")
_TYPES = {"html": "text/html; charset=utf-8", "js": "application/javascript", "css": "text/css"}


def _static(name: str) -> str:
    return resources.files("feedrank.serving").joinpath("static", name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- live metrics


def scrape(registry, local=None) -> dict[str, Any]:
    """The counters and histograms the dashboard needs, read from a Prometheus registry
    (with several workers: the one over every worker's files); the consumer's figures from
    ``local`` (this process's own registry) when given: each worker's consumer reads every
    worker's events, so its own figures are the ones to compare with the totals."""
    out: dict[str, Any] = {"feeds": {}, "events_accepted": 0.0, "buckets": {}, "impressions_written": 0.0,
                           "consumer_applied": None, "heartbeat_age_s": None}
    consumer_names = ("feedrank_features_consumer_applied_total", "feedrank_features_node_consumer_applied",
                      "feedrank_features_heartbeat_age_seconds")
    samples = [s for metric in registry.collect() for s in metric.samples
               if local is None or local is registry or s.name not in consumer_names]
    if local is not None and local is not registry:
        samples += [s for metric in local.collect() for s in metric.samples if s.name in consumer_names]
    for s in samples:
        name, labels, value = s.name, s.labels, s.value
        if name == "feedrank_feed_requests_total":
            out["feeds"][labels.get("tier", "?")] = value
        elif name == "feedrank_events_total" and labels.get("result") == "accepted":
            out["events_accepted"] = value
        elif name == "feedrank_impressions_total" and labels.get("result") == "written":
            out["impressions_written"] = value
        elif name == "feedrank_stage_latency_seconds_bucket" and labels.get("stage") == "total":
            out["buckets"][float(labels["le"])] = value
        elif name in ("feedrank_features_consumer_applied_total", "feedrank_features_node_consumer_applied"):
            out["consumer_applied"] = value
        elif name == "feedrank_features_heartbeat_age_seconds":
            out["heartbeat_age_s"] = None if value != value else value
    # counter lag: events appended to the log (client events and impressions, by every
    # worker) that this process's real-time consumer has not applied yet; None without one
    out["lag"] = None if out["consumer_applied"] is None else \
        max(0.0, out["events_accepted"] + out["impressions_written"] - out["consumer_applied"])
    return out


def quantile_from_buckets(buckets: dict[float, float], q: float) -> float | None:
    """Quantile (seconds) from cumulative histogram buckets {le: count}, linear within a bucket."""
    les = sorted(buckets)
    if not les or buckets[les[-1]] <= 0:
        return None
    total = buckets[les[-1]]
    target = q * total
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= target:
            if le == float("inf"):
                return prev_le
            frac = (target - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return prev_le + frac * (le - prev_le)
        prev_le, prev_c = le, c
    return prev_le


class LiveSampler:
    """Keeps recent scrapes; figures are deltas over the last ``WINDOW_S`` seconds."""

    def __init__(self, registry, local=None) -> None:
        self.registry, self.local = registry, local
        self.samples: deque[tuple[float, dict[str, Any]]] = deque(maxlen=600)
        self.lock = threading.Lock()
        self.started = time.time()

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        cur = scrape(self.registry, self.local)
        with self.lock:
            self.samples.append((now, cur))
            while len(self.samples) > 2 and now - self.samples[1][0] >= WINDOW_S:
                self.samples.popleft()
            t0, old = self.samples[0]
        dt = now - t0
        feeds_now, feeds_old = sum(cur["feeds"].values()), sum(old["feeds"].values())
        tiers = {t: cur["feeds"][t] - old["feeds"].get(t, 0.0) for t in cur["feeds"]}
        if sum(tiers.values()) <= 0:  # nothing in the window: the mix since start
            tiers = dict(cur["feeds"])
        tot = sum(tiers.values())
        window = {le: c - old["buckets"].get(le, 0.0) for le, c in cur["buckets"].items()}
        use = window if window and max(window.values()) > 0 else cur["buckets"]
        p50 = quantile_from_buckets(use, 0.5)
        p99 = quantile_from_buckets(use, 0.99)
        return {
            "ts": now,
            "window_s": round(dt, 2),
            "uptime_s": round(now - self.started, 1),
            "rps": (feeds_now - feeds_old) / dt if dt > 0 else 0.0,
            "events_per_s": (cur["events_accepted"] - old["events_accepted"]) / dt if dt > 0 else 0.0,
            "p50_ms": None if p50 is None else p50 * 1000.0,
            "p99_ms": None if p99 is None else p99 * 1000.0,
            "tier_mix": {t: v / tot for t, v in tiers.items()} if tot > 0 else {},
            "feeds_total": feeds_now,
            "events_total": cur["events_accepted"],
            "counter_lag": cur["lag"],
            "consumer_heartbeat_age_s": cur["heartbeat_age_s"],
        }


# --------------------------------------------------------------------------- the router


def _feed_preview(service, user_id: str, k: int) -> dict[str, Any]:
    return feed_body(service.recommend(FeedRequest(user_id=user_id, k=k, explain=True)), preview=True)


def _models(service, event_log) -> dict[str, Any]:
    out: dict[str, Any] = {"serving": service.model_version, "registry": None, "experiments": []}
    base = getattr(service, "base", service)  # ExperimentRouter wraps the base service
    reg = getattr(base, "registry", None)
    if reg is not None and hasattr(reg, "list"):
        try:
            out["registry"] = [{"version": v.version, "bundle": v.bundle_version, "created_at": v.created_at, "current": v.current}
                               for v in reg.list()]
        except Exception as exc:  # a registry read must not break the page
            out["registry_error"] = f"{type(exc).__name__}: {exc}"
    source = getattr(service, "source", None)
    if source is not None and hasattr(source, "current"):
        try:
            for exp in source.current():
                out["experiments"].append({"name": exp.name, "traffic": exp.traffic,
                                           "arms": [{"name": a.name, "weight": a.weight, "model_version": a.model_version,
                                                     "settings": dict(a.settings)} for a in exp.arms]})
        except Exception as exc:
            out["experiments_error"] = f"{type(exc).__name__}: {exc}"
    return out


def _arm_ctr(events_root: Path) -> list[dict[str, Any]]:
    """Per-arm results from the event log (every worker's partition)."""
    from feedrank.data.partitions import read_partitions
    from feedrank.evaluation.abreport import ab_report

    return ab_report(read_partitions(events_root))["arms"]


def dashboard_router(app: FastAPI, api_key: str | None = None) -> APIRouter:
    """The dashboard's routes; reads ``app.state`` (service, event_log, registry). ``api_key``
    guards the admin action (none configured: admin actions are disabled)."""
    router = APIRouter(include_in_schema=False)
    metrics = app.state.metrics
    sampler = LiveSampler(metrics.view(), metrics.registry)  # totals over every worker; this worker's consumer
    arms_cache: dict[str, Any] = {"t": 0.0, "arms": [], "error": None}
    arms_lock = threading.Lock()
    report_path: dict[str, Path | None] = {"admin": None}

    def _report_file() -> Path | None:
        cands = [report_path["admin"], Path(os.environ["FEEDRANK_REPORT"]) if os.environ.get("FEEDRANK_REPORT") else None,
                 Path(app.state.events_root).parent / "report.html"]
        for p in cands:
            if p is not None and p.exists():
                return p
        return None

    @router.get("/dashboard")
    def page() -> HTMLResponse:
        return HTMLResponse(_static("dashboard.html"))

    @router.get("/dashboard/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no static file {name!r}")
        return Response(_static(name), media_type=_TYPES[name.rsplit(".", 1)[1]])

    @router.get("/dashboard/api/feed")
    def feed(user_id: str = Query(..., min_length=1, max_length=256), k: int = Query(10, ge=1, le=100)) -> Response:
        return Response(json.dumps(_feed_preview(app.state.service, user_id, k)), media_type="application/json")

    @router.get("/dashboard/api/live")
    def live() -> dict[str, Any]:
        return sampler.snapshot()

    @router.get("/dashboard/api/models")
    async def models() -> dict[str, Any]:
        out = _models(app.state.service, app.state.event_log)
        now = time.time()
        if now - arms_cache["t"] > ARMS_TTL_S:
            def refresh() -> None:
                with arms_lock:
                    try:
                        arms_cache["arms"], arms_cache["error"] = _arm_ctr(app.state.events_root), None
                    except Exception as exc:
                        arms_cache["error"] = f"{type(exc).__name__}: {exc}"
                    arms_cache["t"] = time.time()
            await run_in_threadpool(refresh)
        out["arms"] = arms_cache["arms"]
        out["arms_error"] = arms_cache["error"]
        out["arms_as_of"] = arms_cache["t"]
        return out

    @router.get("/dashboard/api/report")
    def report_summary() -> dict[str, Any]:
        p = _report_file()
        if p is None:
            return {"available": False, "hint": "run `feedrank report --model MODEL_DIR --out <events dir>/../report.html`"}
        side = p.with_suffix(".json")
        summary = json.loads(side.read_text()) if side.exists() else {}
        return {"available": True, "path": str(p), "url": "/dashboard/report", "modified": p.stat().st_mtime, "summary": summary}

    @router.get("/dashboard/report")
    def report_html() -> FileResponse:
        p = _report_file()
        if p is None:
            raise HTTPException(404, "no evaluation report yet: run `feedrank report`")
        return FileResponse(p, media_type="text/html")

    @router.post("/dashboard/api/admin/report")
    async def set_report(request: Request) -> dict[str, Any]:
        key = api_key
        if not key:
            raise HTTPException(403, "admin actions are disabled: no API key is configured (serving.api_key or FEEDRANK_API_KEY)")
        given = request.headers.get("x-api-key") or ""
        if not hmac.compare_digest(given.encode(), str(key).encode()):
            raise HTTPException(401, "admin actions need the API key (X-API-Key)")
        body = await request.json()
        path = Path(str(body.get("path", "")))
        if not path.is_file() or path.suffix != ".html":
            raise HTTPException(422, f"path: {str(path)!r} is not an existing .html file")
        report_path["admin"] = path
        return {"report": str(path)}

    return router
