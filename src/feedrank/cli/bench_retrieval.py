"""`feedrank bench retrieval`: quality on several datasets side by side, and ANN speed."""

from __future__ import annotations

import click

from feedrank.cli.common import config_options, resolve_config, say


@click.command("retrieval")
@click.option("--data", "datasets", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset folder (repeatable): synthetic worlds add the oracle's numbers.")
@click.option("--max-users", default=3000, show_default=True, type=click.IntRange(10), help="Evaluated users per dataset.")
@click.option("--speed-items", default=1_000_000, show_default=True, type=click.IntRange(0),
              help="Items in the synthetic speed corpus (0 skips the speed section).")
@click.option("--speed-dim", default=64, show_default=True, type=click.IntRange(4, 1024))
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
@config_options
def retrieval(datasets: tuple[str, ...], max_users: int, speed_items: int, speed_dim: int, no_progress: bool, as_json: bool,
              config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Retrieval quality (two-tower vs popularity vs ALS, oracle on synthetic worlds;
    recall@10/50/100, nDCG@10, cold-start recall@100) and ANN speed (flat / HNSW / IVF-PQ:
    build time, memory, p50/p99 per query at batch 1, recall@100 vs exact).

    Writes benchmarks/results/retrieval.json (plus a timestamped copy).

    \b
    Examples:
      feedrank bench retrieval --data var/world --data var/ml100k --data var/mlsmall --json
      feedrank bench retrieval --data var/ml100k --speed-items 0 retrieval.content_encoder=minilm
      feedrank bench retrieval --speed-items 1000000 --speed-dim 64
    """
    import json

    from feedrank.bench import write_result
    from feedrank.bench.retrieval import run_quality, run_speed

    cfg = resolve_config(config_path, overrides)
    result: dict = {"config_overrides": list(overrides), "quality": [], "speed": None}
    for d in datasets:
        say(f"quality: {d}")
        result["quality"].append(run_quality(d, cfg, max_users=max_users, show_progress=not no_progress, say=say))
    if speed_items:
        say(f"speed: {speed_items:,} items x {speed_dim}-d")
        result["speed"] = run_speed(speed_items, speed_dim, say=say)
    path = write_result("retrieval", result)
    say(f"written {path}")
    if as_json:
        click.echo(json.dumps(result, indent=2))
