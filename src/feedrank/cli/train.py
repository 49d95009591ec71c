"""`feedrank train`: train every stage from a dataset folder into one model bundle."""

from __future__ import annotations

import json

import click

from feedrank.cli.common import config_options, resolve_config, say


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Canonical dataset folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Model bundle folder to write (replaced atomically).")
@click.option("--no-eval", is_flag=True, help="Skip the offline evaluation on the test split.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@config_options
def train(data_dir: str, out_dir: str, no_eval: bool, no_progress: bool, config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Train the two-tower retriever, ANN index and ranker; write a model bundle.

    The dataset is split by time (split.test_fraction); models learn from the train side
    and the bundle records their metrics on the test side.

    \b
    Examples:
      feedrank train --data var/world --out var/model
      feedrank train --data var/mind --out var/mind-model ranking.epochs=3 retrieval.index=hnsw
      feedrank train --data var/world --out var/model --config configs/default.yaml
    """
    from feedrank.evaluation.offline import evaluate_prepared
    from feedrank.pipeline.build import train_model

    cfg = resolve_config(config_path, overrides)
    art = train_model(data_dir, out_dir, cfg, show_progress=not no_progress,
                      evaluator=None if no_eval else evaluate_prepared, say=say)
    summary = {"model": out_dir, "version": art.version, "metrics": art.info.get("metrics")}
    if summary["metrics"]:
        summary["metrics"] = {k: summary["metrics"].get(k) for k in ("retrieval", "ranking")}
    click.echo(json.dumps(summary, indent=2))
