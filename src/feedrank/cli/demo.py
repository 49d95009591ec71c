"""`feedrank demo`: synthetic world -> train -> serve -> show three users' feeds.

With ``--smoke`` everything is smaller, the server runs on a free port, the demo sends
its own requests, checks the answers and exits 0 (or 1 listing what failed).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx

from feedrank.cli.common import say


@dataclass(frozen=True)
class DemoSize:
    users: int
    items: int
    days: int


FULL = DemoSize(users=20_000, items=5_000, days=14)
SMOKE = DemoSize(users=3_000, items=1_000, days=5)
# sessions per user per day: dense enough that a 2-week world teaches the models something
DEMO_ACTIVITY = 1.0


def _pick_users(model_dir: Path) -> list[str]:
    """Two of the most active users (different favourite topics) and one new user."""
    import numpy as np

    from feedrank.pipeline.artifacts import load_artifacts

    art = load_artifacts(model_dir, verify=False)
    snap = art.snapshot
    order = np.argsort(-snap.user_clicks, kind="stable")
    picked: list[str] = []
    top_cats: set[str] = set()
    for u in order[:200]:
        hist = snap.histories[u]
        cats = [art.catalog.categories[i] for i in hist if i >= 0]
        fav = max(set(cats), key=cats.count) if cats else ""
        if fav and fav not in top_cats:
            picked.append(str(snap.user_ids[u]))
            top_cats.add(fav)
        if len(picked) == 2:
            break
    return picked + ["brand-new-user"]


def _print_feed(client: httpx.Client, user: str, k: int = 10) -> dict:
    r = client.get("/v1/feed", params={"user_id": user, "k": k})
    r.raise_for_status()
    body = r.json()
    click.echo(f"\nfeed for {user}  (tier={body['tier']}, model={body['model_version']}, "
               f"total {body['timings_ms'].get('total', 0):.1f} ms)")
    click.echo(f"  {'#':>2}  {'score':>7}  {'source':<8} {'category':<14} title")
    for it in body["items"]:
        click.echo(f"  {it['rank']:>2}  {it['score']:7.4f}  {it['source']:<8} {it['category'][:14]:<14} {it['title'][:70]}")
    return body


def _start_report(model_dir: Path, world_dir: Path, out: Path) -> None:
    """Write the evaluation report (`feedrank report`) in a background thread; the dashboard
    links it as soon as it exists."""
    import threading

    def run() -> None:
        from feedrank.evaluation.report import build_report_data, write_report

        try:
            data = build_report_data(model_dir, None, world_dir, say=lambda m: None)
            write_report(out, data)
            say(f"report ready: {out}")
        except Exception as exc:  # the demo keeps serving without it
            say(f"report failed: {type(exc).__name__}: {exc}")

    threading.Thread(target=run, name="feedrank-report", daemon=True).start()


def _smoke_checks(client: httpx.Client, users: list[str]) -> list[str]:
    """Requests a real client would send; returns every failed check."""
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    for u in users:
        r = client.get("/v1/feed", params={"user_id": u, "k": 10})
        check(r.status_code == 200, f"feed for {u}: status {r.status_code}")
        if r.status_code == 200:
            body = r.json()
            ids = [it["item_id"] for it in body["items"]]
            check(len(ids) == 10, f"feed for {u}: {len(ids)} items, expected 10")
            check(len(set(ids)) == len(ids), f"feed for {u}: duplicate items")
            check(body["tier"] == "full", f"feed for {u}: tier {body['tier']!r}, expected 'full' (a stage failed?)")
            check(all(it["source"] for it in body["items"]), f"feed for {u}: item without source")
            check("retrieve" in body["timings_ms"], f"feed for {u}: no per-stage timings")
    check(client.get("/v1/feed", params={"user_id": users[0], "k": 0}).status_code == 422, "k=0 must be 422")
    first = client.get("/v1/feed", params={"user_id": users[0], "k": 10}).json()
    item = first["items"][0]["item_id"]
    now = time.time()
    ev = {"events": [
        {"event_id": f"smoke-{now}-c", "ts": now, "user_id": users[0], "item_id": item, "kind": "click",
         "position": 0, "request_id": first["request_id"]},
        {"event_id": f"smoke-{now}-bad", "ts": now, "user_id": users[0], "item_id": "no-such-item", "kind": "click"},
    ]}
    r = client.post("/v1/events", json=ev)
    check(r.status_code == 202, f"POST /v1/events: status {r.status_code}")
    if r.status_code == 202:
        body = r.json()
        check(body.get("accepted") == 1, f"POST /v1/events: accepted {body.get('accepted')}, expected 1")
        check(len(body.get("errors", [])) == 1, "POST /v1/events: the unknown item must be reported")
    again = client.get("/v1/feed", params={"user_id": users[0], "k": 10}).json()
    check(item not in [it["item_id"] for it in again["items"]], "an item already shown came back (seen filter)")
    check(client.get("/healthz").status_code == 200, "/healthz not 200")
    check(client.get("/readyz").status_code == 200, "/readyz not 200")
    metrics = client.get("/metrics").text
    check("feedrank_stage_latency_seconds" in metrics, "/metrics lacks per-stage latency histograms")
    check(client.get("/dashboard").status_code == 200, "/dashboard not 200")
    return failures


@click.command()
@click.option("--smoke", is_flag=True, help="Small world, own server on a free port, check the answers, exit.")
@click.option("--workdir", default="var/demo", show_default=True, type=click.Path(file_okay=False), help="Where the world, model and event log go.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int, help="Port to serve on (ignored with --smoke: a free one is used).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def demo(smoke: bool, workdir: str, host: str, port: int, seed: int, no_progress: bool) -> None:
    """Build a synthetic world, train on it, serve it, and show three users' feeds.

    \b
    Examples:
      feedrank demo                 # 20k users x 5k items x 14 days, serves on :8000 until Ctrl-C
      feedrank demo --smoke         # 3k x 1k x 5 days, checks its own server, exits 0
      feedrank demo --workdir /tmp/fr --port 8080
    """
    from feedrank.serving.factory import build_service
    from feedrank.serving.server import BackgroundServer, free_port
    from feedrank.config import load_config
    from feedrank.data.synth.simulate import generate_world
    from feedrank.data.synth.world import WorldConfig
    from feedrank.evaluation.offline import evaluate_prepared
    from feedrank.pipeline.build import train_model

    size = SMOKE if smoke else FULL
    work = Path(workdir) / ("smoke" if smoke else "full")
    world_dir, model_dir, events_dir = work / "world", work / "model", work / "events"
    t0 = time.time()
    # the world ends now, so the live server's clock continues where the data stops
    start = float(int(time.time() // 3600 * 3600) - size.days * 86400)
    say(f"step 1/4: synthetic world ({size.users:,} users x {size.items:,} items x {size.days} days) -> {world_dir}")
    summary = generate_world(world_dir, WorldConfig(n_users=size.users, n_items=size.items, n_days=size.days, seed=seed, start=start,
                                                    activity_mean=DEMO_ACTIVITY),
                             progress=not no_progress)
    say(f"          {summary.meta.n_events:,} events ({summary.meta.events_by_kind}) in {summary.seconds:.1f}s")
    say(f"step 2/4: training -> {model_dir}")
    overrides = ["retrieval.epochs=2", "ranking.epochs=1"] if smoke else []
    cfg = load_config(None, overrides)
    art = train_model(world_dir, model_dir, cfg, show_progress=not no_progress, evaluator=evaluate_prepared, say=say)
    m = art.info.get("metrics", {})
    say(f"          retrieval {m.get('retrieval')}")
    say(f"          ranking   {m.get('ranking')}")
    say(f"step 3/4: starting the server (setup + training took {time.time() - t0:.0f}s)")
    port = free_port() if smoke else port
    app, event_log, rec, _ = build_service(str(model_dir), str(events_dir))
    server = BackgroundServer(app, host, port).start()
    users = _pick_users(model_dir)
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            say(f"step 4/4: feeds from {server.url}")
            for u in users:
                _print_feed(client, u)
            click.echo(f"\ntry it:  curl '{server.url}/v1/feed?user_id={users[0]}&k=10'")
            click.echo(f"         API docs {server.url}/docs   metrics {server.url}/metrics")
            click.echo(f"         dashboard {server.url}/dashboard?user_id={users[0]}")
            if not smoke:
                _start_report(model_dir, world_dir, work / "report.html")
                click.echo(f"         report    {server.url}/dashboard/report  ({work / 'report.html'}, written in the background)")
            if smoke:
                failures = _smoke_checks(client, users)
                if failures:
                    for f in failures:
                        click.echo(f"SMOKE FAIL: {f}", err=True)
                    sys.exit(1)
                click.echo("smoke: all checks passed")
                return
        click.echo("\nserving; press Ctrl-C to stop")
        while server.thread.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        event_log.close()
