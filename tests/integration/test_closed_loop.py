"""The closed loop, short: a live registry server, the world's users over HTTP, a retrain
in the background (the real `feedrank retrain` subprocess), breaking news half way."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from feedrank.bench.closed_loop import LoopConfig, SubprocessRetrainer, plot_loop, run_closed_loop
from feedrank.config import load_config
from feedrank.data.eventlog import EventLog
from feedrank.data.synth import WorldConfig, WorldTruth, generate_world
from feedrank.data.synth.live import BreakingNews, LiveWorld
from feedrank.pipeline.build import train_model
from feedrank.registry.store import ModelRegistry
from feedrank.serving.factory import build_registry_service
from feedrank.serving.server import BackgroundServer, free_port
from feedrank.types import EventKind

NOW = float(int(time.time() // 3600 * 3600))


def test_closed_loop_runs_end_to_end(tmp_path: Path):
    world = tmp_path / "world"
    generate_world(world, WorldConfig(n_users=600, n_items=200, n_days=3, activity_mean=2.0, seed=4, start=NOW - 3 * 86400.0),
                   progress=False)
    cfg = load_config(None, ["retrieval.epochs=1", "ranking.epochs=1", "retrieval.id_buckets=4096",
                             "retrieval.text_buckets=4096", "ranking.distill_hidden=[]"])
    train_model(world, tmp_path / "model", cfg, show_progress=False, say=lambda m: None)
    reg_dir, events_dir = tmp_path / "registry", tmp_path / "registry" / "events"
    ModelRegistry(reg_dir).publish(tmp_path / "model", promote=True)
    # freshness at serving (a news feed's usual setting) lets brand-new items compete
    app, event_log, manager, _ = build_registry_service(str(reg_dir), str(events_dir),
                                                        overrides=("ranking.freshness_tau_hours=12",), poll_s=0.5)
    manager.start()
    server = BackgroundServer(app, "127.0.0.1", free_port()).start()
    retrainer = SubprocessRetrainer([sys.executable, "-m", "feedrank.cli.main", "retrain", "--registry", str(reg_dir),
                                     "--events", str(events_dir), "--json", "--no-progress", "--min-impressions", "50"],
                                    tmp_path / "retrain.log")
    live = LiveWorld(WorldTruth.load(world).world, BreakingNews(start_minute=2, n_items=6, interested_share=0.5), seed=1)
    loop = LoopConfig(minutes=5, speed=1.5, requests_per_minute=25, retrain_every=2, breaking=live.breaking, workers=3)
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            res = run_closed_loop(client, live, loop, retrainer, say=lambda m: None)
    finally:
        server.stop()
        manager.stop()
        event_log.close()

    assert len(res.minutes) == 5 and res.summary["errors"] == 0
    assert res.summary["requests"] == 5 * 25 and res.summary["impressions"] > 0 and res.summary["clicks"] > 0
    assert set(res.summary["ctr_by_tier"]) <= {"full", "reduced", "fallback"}
    # the breaking topic was posted, then shown
    assert res.breaking["start_minute"] == 2 and not res.breaking["new_topic"]
    assert sum(m.feeds_with_breaking for m in res.minutes if m.minute >= 2) > 0
    assert all(m.feeds_with_breaking == 0 for m in res.minutes if m.minute < 2)
    # the retrain ran to a decision (the real CLI, in its own process)
    assert res.retrains and res.retrains[0]["minute_started"] == 2
    assert res.retrains[0]["action"] in ("promoted", "rejected", "skipped"), (tmp_path / "retrain.log").read_text()[-2000:]
    # events were logged: the server's impressions and the users' clicks and dwell
    log = EventLog(events_dir, readonly=True)
    try:
        kinds = [rec.event.kind for rec in log.read()]
    finally:
        log.close()
    assert kinds.count(EventKind.IMPRESSION) == res.summary["impressions"]
    assert kinds.count(EventKind.CLICK) == res.summary["clicks"] == kinds.count(EventKind.DWELL)
    png = plot_loop(res, tmp_path / "loop.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
