"""The ``feedrank`` console script.

    feedrank --help
    feedrank data synth --out var/world --users 2000 --items 1000 --days 7
    feedrank train --data var/world --out var/model
    feedrank eval --data var/world --model var/model --json
    feedrank serve --model var/model --port 8000
    feedrank demo --smoke
"""

from __future__ import annotations

import sys

import click

from feedrank import __version__
from feedrank.errors import FeedrankError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="feedrank")
def cli() -> None:
    """feedrank: a news-feed recommender (retrieval, ranking, re-ranking, serving).

    \b
    Examples:
      feedrank demo                      # synth world, train, serve on :8000
      feedrank data synth --out var/w --users 5000 --items 2000 --days 7
      feedrank train --data var/w --out var/m
      feedrank eval --data var/w --model var/m --json
    """


def _register() -> None:
    from feedrank.cli import ab, bench, config_cmd, data, demo, evaluate, models, plan, serve, train
    from feedrank.cli import retrain as retrain_cmd, simulate as simulate_cmd
    from feedrank.cli import report as report_cmd

    cli.add_command(data.data)
    cli.add_command(train.train)
    cli.add_command(evaluate.eval_cmd)
    cli.add_command(evaluate.ope_group)
    cli.add_command(report_cmd.report)
    cli.add_command(serve.serve)
    cli.add_command(demo.demo)
    cli.add_command(config_cmd.config_group)
    cli.add_command(bench.bench_group)
    cli.add_command(models.models_group)
    cli.add_command(ab.ab_group)
    cli.add_command(plan.plan)
    cli.add_command(retrain_cmd.retrain)
    cli.add_command(simulate_cmd.simulate)
    from feedrank.cli import features_cmd

    cli.add_command(features_cmd.features_group)


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FeedrankError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
