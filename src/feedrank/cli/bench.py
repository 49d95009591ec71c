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
