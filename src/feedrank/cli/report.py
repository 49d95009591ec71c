"""`feedrank report`: one self-contained HTML report about a model (docs/evaluation.md)."""

from __future__ import annotations

import click

from feedrank.cli.common import say


@click.command("report")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Model bundle folder.")
@click.option("--baseline", "baseline_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="A second bundle to compare with (default: a popularity scorer).")
@click.option("--data", "data_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Dataset (default: the one the model was trained on, from its manifest).")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="HTML file to write (+ a .json beside it).")
@click.option("--bench-dir", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False),
              help="Where the last bench results (feed.json, serve.json, ope_coverage.json) are.")
@click.option("--simulation", default=None, type=click.Path(dir_okay=False),
              help="CTR-over-time JSON of the last simulation (default: <bench-dir>/simulate.json if present).")
@click.option("--users", "n_users", default=300, show_default=True, type=click.IntRange(2), help="Feeds served for the beyond-accuracy metrics.")
@click.option("--max-impressions", default=100_000, show_default=True, type=click.IntRange(100), help="Test impressions scored (whole requests).")
@click.option("--bootstrap", default=100, show_default=True, type=click.IntRange(10), help="Bootstrap resamples for the intervals.")
@click.option("--seed", default=0, show_default=True, type=int)
def report(model_dir: str, baseline_dir: str | None, data_dir: str | None, out_file: str, bench_dir: str,
           simulation: str | None, n_users: int, max_impressions: int, bootstrap: int, seed: int) -> None:
    """Write an HTML report: metric deltas with intervals, segments, calibration, served-feed
    metrics and the creator exposure Lorenz curve, latency from the last bench, CTR over time
    from the last simulation, and the off-policy coverage check.

    \b
    Examples:
      feedrank report --model var/demo/full/model --out var/demo/full/report.html
      feedrank report --model var/model-new --baseline var/model-old --out report.html
      feedrank report --model var/model --data var/world --out /tmp/r.html --users 100 --bootstrap 30
    """
    from feedrank.evaluation.report import build_report_data, write_report

    data = build_report_data(model_dir, baseline_dir, data_dir, bench_dir=bench_dir, simulation=simulation, n_users=n_users,
                             max_scored=max_impressions, reps=bootstrap, seed=seed, say=say)
    html_path, json_path = write_report(out_file, data)
    say(f"report written in {data['seconds']} s: {html_path} (numbers: {json_path})")
    click.echo(str(html_path))
