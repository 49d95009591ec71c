"""`feedrank eval`: offline metrics of a model bundle on a dataset's test split."""

from __future__ import annotations

import json

import click

from feedrank.cli.common import say


@click.command("eval")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Canonical dataset folder.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Model bundle folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (progress goes to stderr).")
@click.option("--oracle", is_flag=True, help="Synthetic worlds: also score the true attractiveness (what a perfect ranker gets).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Also write the JSON to this file.")
def eval_cmd(data_dir: str, model_dir: str, as_json: bool, oracle: bool, out_file: str | None) -> None:
    """Evaluate a model on the test side of the dataset's time split.

    Prints `retrieval` (recall@10, recall@100, ndcg@10), `ranking` (auc, gauc, mrr,
    ndcg@5, ndcg@10; null when the data has no impressions), `split` (boundary, counts)
    and popularity baselines.

    \b
    Examples:
      feedrank eval --data var/world --model var/model --json
      feedrank eval --data var/world --model var/model --json --oracle
      feedrank eval --data var/ml100k --model var/ml100k-model --json --out ml100k.json
    """
    from feedrank.evaluation.offline import evaluate_model

    result = evaluate_model(data_dir, model_dir, oracle=oracle, say=say)
    text = json.dumps(result, indent=None if as_json else 2, sort_keys=True, default=float)
    if out_file:
        with open(out_file, "w") as f:
            f.write(text + "\n")
    click.echo(text)
