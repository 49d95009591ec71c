"""`feedrank bench retrain`: time one gated retrain cycle on N new events."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("retrain")
@click.option("--users", default=20_000, show_default=True, type=click.IntRange(100))
@click.option("--items", default=5_000, show_default=True, type=click.IntRange(50))
@click.option("--days", default=14, show_default=True, type=click.IntRange(2))
@click.option("--activity", default=1.0, show_default=True, type=click.FloatRange(0.01), help="Sessions per user per day.")
@click.option("--new-events", default=1_000_000, show_default=True, type=click.IntRange(100),
              help="Newest events of the world that go into the live event log (the rest is the base dataset).")
@click.option("--workdir", default="var/bench-retrain", show_default=True, type=click.Path(file_okay=False))
@click.option("--no-progress", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
@click.argument("overrides", nargs=-1, metavar="[SECTION.KEY=VALUE]...")
def retrain(users: int, items: int, days: int, activity: float, new_events: int, workdir: str, no_progress: bool,
            as_json: bool, overrides: tuple[str, ...]) -> None:
    """Retraining time on --new-events new events (issue #6 target: 1M in <= 10 min on
    2 cores): a world is split in time, the champion is trained on the older part and
    promoted in a registry, the newest events go into an event log, then one `feedrank
    retrain` cycle runs (data, warm-started challenger, evaluation of both, gate, publish).
    Writes benchmarks/results/retrain.json.

    \b
    Examples:
      feedrank bench retrain --json                                   # 20k users, 14 days, 1M new events
      feedrank bench retrain --users 2000 --items 500 --days 4 --new-events 20000
    """
    from feedrank.bench import write_result
    from feedrank.bench.retrain import bench_retrain
    from feedrank.cli.common import say

    result = bench_retrain(Path(workdir), users, items, days, new_events, activity, overrides=overrides, say=say,
                           show_progress=not no_progress)
    path = write_result("retrain", result)
    say(f"retrain cycle on {result['scenario']['log_events']:,} new events: {result['retrain']['total_s']} s "
        f"({result['retrain']['action']}); written {path}")
    if as_json:
        click.echo(json.dumps(result, indent=2, default=float))
