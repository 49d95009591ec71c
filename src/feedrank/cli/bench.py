"""`feedrank bench ...`: measured scenarios; results go to benchmarks/results/."""

from __future__ import annotations

import click


@click.group("bench")
def bench_group() -> None:
    """Run a benchmark scenario and record its results in benchmarks/results/.

    Each scenario registers a subcommand here (one module per scenario under
    feedrank/bench/). Results name the machine they were measured on.

    \b
    Examples:
      feedrank bench --help
      feedrank bench feed --json
    """


@bench_group.command("feed")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Model bundle folder.")
@click.option("--requests", default=2000, show_default=True, type=click.IntRange(10), help="Feed requests to time.")
@click.option("--k", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--no-http", is_flag=True, help="Only time the pipeline in process.")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
def feed(model_dir: str, requests: int, k: int, no_http: bool, as_json: bool) -> None:
    """Feed latency per stage (in process) and over HTTP, as p50/p90/p99 in ms.

    Writes benchmarks/results/feed.json (plus a timestamped copy).

    \b
    Examples:
      feedrank bench feed --model var/demo/full/model --json
      feedrank bench feed --model var/demo/full/model --requests 500 --no-http
    """
    import json

    from feedrank.bench import write_result
    from feedrank.bench.feed import run_feed_bench
    from feedrank.cli.common import say

    result = run_feed_bench(model_dir, requests=requests, k=k, http=not no_http, say=say)
    path = write_result("feed", result)
    say(f"written {path}")
    if as_json:
        click.echo(json.dumps(result, indent=2))



@bench_group.command("serve")
@click.option("--users", default=1_000_000, show_default=True, type=click.IntRange(100))
@click.option("--items", default=1_000_000, show_default=True, type=click.IntRange(100))
@click.option("--days", default=5, show_default=True, type=click.IntRange(1),
              help="Days of synthetic history (5: the 80/20 time split falls on a day boundary).")
@click.option("--activity", default=0.15, show_default=True, type=float, help="Sessions per user per day in the world.")
@click.option("--rates", default="100,200,300,400", show_default=True, help="Offered request rates (rps), comma-separated.")
@click.option("--seconds", default=15, show_default=True, type=click.IntRange(3, 300), help="Duration of each rate.")
@click.option("--warmup-seconds", default=10, show_default=True, type=click.IntRange(0, 300),
              help="Unmeasured load at the first rate before the measured ones (a fresh server touches the "
                   "bundle's pages for the first time: its first seconds are slower than its steady state).")
@click.option("--connections", default=32, show_default=True, type=click.IntRange(1, 1000))
@click.option("--k", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--workdir", default="var/bench/serve", show_default=True, type=click.Path(file_okay=False),
              help="World and model are built here once per size and reused.")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Runtime setting for the server, e.g. --set pipeline.rank_batch_wait_ms=1.5 (repeatable).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Server processes (feedrank serve --workers): one per core.")
@click.option("--json", "as_json", is_flag=True)
def serve_cmd(users: int, items: int, days: int, activity: float, rates: str, seconds: int, warmup_seconds: int,
              connections: int, k: int, workdir: str, settings: tuple[str, ...], workers: int, as_json: bool) -> None:
    """Load test the HTTP server with wrk at fixed offered rates (127.0.0.1 only, bounded in
    time): achieved rps, p50/p75/p90/p99, non-2xx, tier mix, and a bare ASGI endpoint in the
    same run for the cost of the HTTP layer. Before any load it waits until the live
    features' consumer has caught up with the (reused) events folder (``consumer_catch_up_s``
    in the JSON). Writes benchmarks/results/serve.json.

    \b
    Examples:
      feedrank bench serve --json
      feedrank bench serve --users 20000 --items 5000 --rates 100,300 --seconds 10
      feedrank bench serve --users 20000 --items 5000 --set pipeline.rank_batch_wait_ms=1.5
      feedrank bench serve --users 20000 --items 5000 --days 14 --workers 1
      feedrank bench serve --rates 300,300,300 --warmup-seconds 20
    """
    import json
    from pathlib import Path

    from feedrank.bench import write_result
    from feedrank.bench.serve import run_serve_bench
    from feedrank.cli.common import say

    rate_list = [float(r) for r in rates.split(",") if r.strip()]
    size_dir = Path(workdir) / f"u{users}-i{items}-d{days}"
    result = run_serve_bench(size_dir, users, items, days, activity, rate_list, seconds, connections, k, say, settings,
                             workers=workers, warmup_s=warmup_seconds)
    path = write_result("serve", result)
    say(f"written {path}")
    if as_json:
        click.echo(json.dumps(result, indent=2))


def _register_scenarios() -> None:
    """Scenario commands that live in their own modules (one per scenario)."""
    from feedrank.cli.bench_ingest import ingest
    from feedrank.cli.bench_ranking import ranking
    from feedrank.cli.bench_retrain import retrain
    from feedrank.cli.bench_retrieval import retrieval
    from feedrank.cli.bench_scale import scale

    for command in (ingest, ranking, retrain, retrieval, scale):
        bench_group.add_command(command)


_register_scenarios()
