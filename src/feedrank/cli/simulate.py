"""`feedrank simulate`: the closed loop on the synthetic world against a live server."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from feedrank.cli.common import say
from feedrank.cli.loop_options import events_dir_of, registry_options


@click.command("simulate")
@click.option("--server", required=True, help="Base URL of a running `feedrank serve --registry ...`.")
@click.option("--world", "world_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The synthetic world the server's model was trained on (its truth/ drives the users).")
@click.option("--minutes", default=60, show_default=True, type=click.IntRange(1), help="Simulated minutes.")
@click.option("--speed", default=6.0, show_default=True, type=click.FloatRange(0.1),
              help="Real seconds per simulated minute (6: an hour in 6 minutes).")
@click.option("--rpm", "requests_per_minute", default=120, show_default=True, type=click.IntRange(1),
              help="Feed requests per simulated minute.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 100), help="Items per feed.")
@registry_options(required=False, registry_help="The server's registry: retrain into it on the schedule (omit: no retraining).",
                  data_help="Base dataset for retraining [default: remembered by the champion].")
@click.option("--retrain-every", default=10.0, show_default=True, type=click.FloatRange(1.0),
              help="Simulated minutes between retrain starts.")
@click.option("--retrain-args", default="", help="Extra arguments for `feedrank retrain` (quoted), e.g. "
              "'--min-impressions 500 ranking.epochs=1'.")
@click.option("--breaking-minute", default=None, type=click.FloatRange(0.0),
              help="Simulated minute the breaking topic appears [default: half way].")
@click.option("--breaking-topic", default=None,
              help="Topic of the breaking news [default: the world's rarest topic]; a name the world lacks makes a new topic.")
@click.option("--breaking-items", default=12, show_default=True, type=click.IntRange(1))
@click.option("--breaking-share", default=0.35, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of users who want the breaking topic.")
@click.option("--pickup-share", default=0.05, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="The topic has reached feeds once this share of feeds shows it.")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 64), help="Concurrent simulated users.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out_dir", default="var/simulate", show_default=True, type=click.Path(file_okay=False),
              help="Where loop.json, loop.png and retrain.log go.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def simulate(server: str, world_dir: str, minutes: int, speed: float, requests_per_minute: int, k: int,
             registry_dir: str | None, events_dir: str | None, base_data: str | None, retrain_every: float,
             retrain_args: str, breaking_minute: float | None, breaking_topic: str | None, breaking_items: int, breaking_share: float,
             pickup_share: float, workers: int, seed: int, out_dir: str, as_json: bool) -> None:
    """Run the world's users against a live server: they request feeds, click by the
    world's click model (position bias included) and post their clicks and dwell;
    retraining runs every --retrain-every simulated minutes (a background `feedrank
    retrain`; the server hot-swaps on promotion); half way a breaking-news topic appears
    (new items POSTed to /v1/items, wanted by a share of users). Prints and plots CTR over
    time per tier and arm, and how many minutes the new topic took to reach feeds.

    \b
    Examples:
      feedrank serve --registry var/sim/registry --poll 1 &
      feedrank simulate --server http://127.0.0.1:8000 --world var/sim/world --registry var/sim/registry \\
          --minutes 60 --speed 6 --rpm 120 --retrain-every 10
      feedrank simulate --server http://127.0.0.1:8000 --world var/sim/world --minutes 10 --speed 2  # no retraining
    """
    import httpx

    from feedrank.bench.closed_loop import LoopConfig, SubprocessRetrainer, plot_loop, run_closed_loop
    from feedrank.data.synth.live import BreakingNews, LiveWorld
    from feedrank.data.synth.truth import WorldTruth

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = WorldTruth.load(world_dir)
    breaking = BreakingNews(start_minute=minutes / 2 if breaking_minute is None else breaking_minute,
                            category=breaking_topic, n_items=breaking_items, interested_share=breaking_share)
    cfg = LoopConfig(minutes=minutes, speed=speed, requests_per_minute=requests_per_minute, k=k,
                     retrain_every=retrain_every if registry_dir else None, breaking=breaking,
                     pickup_share=pickup_share, workers=workers, seed=seed)
    retrainer = None
    if registry_dir:
        cmd = [sys.executable, "-m", "feedrank.cli.main", "retrain", "--registry", registry_dir,
               "--events", events_dir_of(registry_dir, events_dir), "--json", "--no-progress"]
        if base_data:
            cmd += ["--data", base_data]
        cmd += shlex.split(retrain_args)
        retrainer = SubprocessRetrainer(cmd, out / "retrain.log")
        say(f"retraining every {retrain_every:g} simulated minutes: {' '.join(cmd[2:])} (log: {out / 'retrain.log'})")
    live = LiveWorld(truth.world, breaking, seed=seed)
    with httpx.Client(base_url=server, timeout=30.0) as client:
        client.get("/healthz").raise_for_status()
        res = run_closed_loop(client, live, cfg, retrainer, say=say)
    (out / "loop.json").write_text(json.dumps(res.to_dict(), indent=2, default=float))
    png = plot_loop(res, out / "loop.png")
    s = res.summary
    if as_json:
        click.echo(json.dumps({"summary": s, "breaking": {k_: v for k_, v in res.breaking.items() if k_ != "share_of_feeds_by_minute"},
                               "retrains": res.retrains, "swaps": res.swaps, "plot": str(png)}, default=float))
        return
    click.echo(f"{s['minutes']} simulated minutes, {s['requests']:,} feeds, {s['impressions']:,} impressions, "
               f"CTR {s['ctr']:.4f}, errors {s['errors']}")
    for name in ("ctr_by_tier", "ctr_by_arm", "ctr_by_model_version"):
        click.echo(f"{name}: " + ", ".join(f"{k_} {v['ctr']:.4f} ({v['impressions']:,})" for k_, v in s[name].items()))
    for r in res.retrains:
        click.echo(f"retrain started minute {r.get('minute_started')}, finished {r.get('minute_finished')}: "
                   f"{r.get('action')} {r.get('version') or ''} ({r.get('detail')}; {r.get('real_seconds')} s)")
    for a in s["ctr_around_swaps"]:
        click.echo(f"swap at minute {a['minute']} -> {a['to']}: CTR 10 min before {a['ctr_before']}, after {a['ctr_after']}")
    b = res.breaking
    click.echo(f"breaking topic posted at minute {b['start_minute']}: reached {b['pickup_share']:.0%} of feeds after "
               f"{b['minutes_to_reach_feeds']} simulated minutes ({b['real_seconds_to_reach_feeds']} s real); "
               f"its CTR {b['ctr']}")
    click.echo(f"plot: {png}   data: {out / 'loop.json'}")
