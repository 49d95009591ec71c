"""`feedrank bench ranking`: ranker quality, calibration, fairness, compression and speed."""

from __future__ import annotations

import json
from pathlib import Path

import click

DEFAULT_MIND = "../shared/data/MIND/MINDsmall_train"


def _world(spec: str) -> tuple[str, int, int, int]:
    try:
        name, users, items, days = spec.split(":")
        return name, int(users), int(items), int(days)
    except ValueError as exc:
        raise click.BadParameter(f"expected NAME:USERS:ITEMS:DAYS, got {spec!r}") from exc


@click.command("ranking")
@click.option("--world", "worlds", multiple=True, default=("demo:20000:5000:14",), show_default=True,
              help="Synthetic world NAME:USERS:ITEMS:DAYS (activity 1.0, seed 1); repeatable.")
@click.option("--mind", "mind_dir", default=DEFAULT_MIND, show_default=True,
              help="MIND split folder (read in place, imported under --work); '' to skip.")
@click.option("--work", "work_dir", default="var/bench-ranking", show_default=True, type=click.Path(file_okay=False),
              help="Where worlds, imports and bundles are written (reused when present).")
@click.option("--max-train", default=300_000, show_default=True, type=click.IntRange(1000),
              help="Newest train impressions used by the comparison variants.")
@click.option("--max-test", default=200_000, show_default=True, type=click.IntRange(1000), help="Test impressions sampled (whole requests).")
@click.option("--reps", default=200, show_default=True, type=click.IntRange(10), help="Timed repetitions per size and variant.")
@click.option("--variant", "variants", multiple=True, help="Only these comparison variants (default: all).")
@click.option("--reuse", is_flag=True, help="Reuse bundles already in --work instead of training them again.")
@click.option("--name", "result_name", default="ranking", show_default=True, help="Result file name under benchmarks/results/.")
@click.option("--speed-only", "speed_model", default=None, type=click.Path(exists=True, file_okay=False),
              help="Only time scoring (full, int8, distilled; 100/500/2000 candidates) of this model bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
@click.argument("overrides", nargs=-1)
def ranking(worlds: tuple[str, ...], mind_dir: str, work_dir: str, max_train: int, max_test: int, reps: int,
            variants: tuple[str, ...], reuse: bool, speed_model: str | None, result_name: str, as_json: bool,
            overrides: tuple[str, ...]) -> None:
    """Ranking metrics (AUC, GAUC, MRR, nDCG@5/10, ECE before/after calibration, exposure
    disparity) on synthetic worlds (with the oracle) and the MIND sample, for the served
    ranker, its int8 and distilled variants, popularity and recency; a comparison of
    interactions, losses and fairness weights on the same examples; p50/p99 scoring time
    for 100/500/2000 candidates and the FLOP floor. Writes benchmarks/results/ranking.json.

    OVERRIDES are config settings (SECTION.KEY=VALUE) for every trained bundle.

    \b
    Examples:
      feedrank bench ranking --json
      feedrank bench ranking --world small:3000:1000:5 --mind '' --variant dcn --variant mlp
      feedrank bench ranking --world a:20000:5000:14 --world b:50000:10000:7 ranking.epochs=3
      feedrank bench ranking --reuse --mind '' --variant mlp --variant 'mlp fairness 0.1' --name ranking-fairness
      feedrank bench ranking --speed-only var/demo/full/model --reps 2000 --name ranking_speed
    """
    from feedrank.bench import write_result
    from feedrank.bench.ranking import COMPARISON, run_ranking_bench
    from feedrank.cli.common import say

    if speed_model:
        from feedrank.bench.ranking import speed
        from feedrank.config import load_config
        from feedrank.pipeline.artifacts import load_artifacts

        result = {"model": speed_model, "speed": speed(load_artifacts(speed_model), load_config(None, overrides), reps, say)}
        path = write_result(result_name, result)
        say(f"written {path}")
        if as_json:
            click.echo(json.dumps(result, indent=2, default=float))
        return
    unknown = [v for v in variants if v not in COMPARISON]
    if unknown:
        raise click.BadParameter(f"unknown variant(s) {unknown}; choose from {list(COMPARISON)}", param_hint="--variant")
    mind = Path(mind_dir) if mind_dir else None
    if mind is not None and not mind.exists():
        say(f"MIND folder {mind} not found: skipping MIND")
        mind = None
    result = run_ranking_bench(Path(work_dir), mind, [_world(w) for w in worlds], max_train, max_test, reps,
                               overrides, list(variants) or None, reuse, say=say)
    path = write_result(result_name, result)
    say(f"written {path}")
    if as_json:
        click.echo(json.dumps(result, indent=2, default=float))
