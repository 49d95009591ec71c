"""`feedrank bench ingest`: durable events/s, counter lag, crash test (bench/ingest.py)."""

from __future__ import annotations

import click


@click.command("ingest")
@click.option("--dir", "work_dir", default="var/bench-ingest", show_default=True, type=click.Path(file_okay=False),
              help="Scratch folder for the logs (use a real disk: fsync on tmpfs is free). Emptied after.")
@click.option("--events", default=200_000, show_default=True, type=click.IntRange(1000), help="Events per embedded run.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(1), help="Append batch size(s). [default: 100, 1000]")
@click.option("--writers", "writers", multiple=True, type=click.IntRange(1, 64), help="Concurrent writer threads. [default: 1, 4]")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 20), help="Runs per setting (best, median, min).")
@click.option("--model", "model_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Model bundle: enables the HTTP part (a `feedrank serve` subprocess on 127.0.0.1).")
@click.option("--http-requests", default=2000, show_default=True, type=click.IntRange(1), help="Max POSTs (batch 100).")
@click.option("--http-seconds", default=20.0, show_default=True, type=click.FloatRange(1.0, 600.0), help="Max time per HTTP run.")
@click.option("--lag-rate", default=5000.0, show_default=True, type=click.FloatRange(100.0), help="Events/s for the lag test.")
@click.option("--lag-seconds", default=10.0, show_default=True, type=click.FloatRange(0.0, 600.0), help="0 skips it.")
@click.option("--kills", default=100, show_default=True, type=click.IntRange(0, 10_000), help="SIGKILLs in the crash test; 0 skips it.")
@click.option("--crash-seconds", default=120.0, show_default=True, type=click.FloatRange(1.0, 3600.0), help="Time bound of the crash test.")
@click.option("--server-kills", default=100, show_default=True, type=click.IntRange(0, 10_000),
              help="With --model: SIGKILLs of the `feedrank serve` subprocess during HTTP ingest; 0 skips it.")
@click.option("--server-crash-seconds", default=1800.0, show_default=True, type=click.FloatRange(1.0, 7200.0),
              help="Time bound of the server crash test (each restart loads the model).")
@click.option("--feature-reads/--no-feature-reads", default=True, show_default=True,
              help="Time the request path's live-feature reads per store backend (memory, sqlite, redis).")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
def ingest(work_dir: str, events: int, batches: tuple[int, ...], writers: tuple[int, ...], repeats: int, model_dir: str | None,
           http_requests: int, http_seconds: float, lag_rate: float, lag_seconds: float, kills: int, crash_seconds: float,
           server_kills: int, server_crash_seconds: float, feature_reads: bool, as_json: bool) -> None:
    """Durable ingest: events/s into the embedded log and over HTTP, counter lag p99, and
    SIGKILL crash tests (acknowledged events lost must be 0): --kills kills a writer
    process; with --model, --server-kills kills the real server during HTTP ingest.

    Writes benchmarks/results/ingest.json (plus a timestamped copy).

    \b
    Examples:
      feedrank bench ingest --json
      feedrank bench ingest --model var/demo/full/model --json
      feedrank bench ingest --batch 1000 --writers 1 --repeats 5 --kills 0 --lag-seconds 0
      feedrank bench ingest --kills 20 --crash-seconds 30 --lag-rate 20000
      feedrank bench ingest --model var/model --server-kills 100 --kills 0 --lag-seconds 0 --repeats 1
    """
    import json
    from pathlib import Path

    from feedrank.bench import write_result
    from feedrank.bench.ingest import run_ingest_bench
    from feedrank.cli.common import say

    result = run_ingest_bench(Path(work_dir), events=events, batches=batches or (100, 1000), writers=writers or (1, 4),
                              repeats=repeats, model=Path(model_dir) if model_dir else None, http_requests=http_requests,
                              http_seconds=http_seconds, lag_rate=lag_rate, lag_seconds=lag_seconds, kills=kills,
                              crash_seconds=crash_seconds, server_kills=server_kills,
                              server_crash_seconds=server_crash_seconds, feature_reads=feature_reads, say=say)
    path = write_result("ingest", result)
    say(f"written {path}")
    if as_json:
        click.echo(json.dumps(result, indent=2))
