"""`feedrank data ...`: import, synthesise and validate canonical datasets."""

from __future__ import annotations

import json

import click

from feedrank.cli.data_import import import_group
from feedrank.cli.data_synth import synth


@click.group()
def data() -> None:
    """Create and check canonical dataset folders.

    \b
    Examples:
      feedrank data synth --out var/world --users 5000 --items 2000 --days 7 --seed 1
      feedrank data import mind ../shared/data/MIND/MINDsmall_train --out var/mind
      feedrank data import movielens ../shared/data/MovieLens/ml-100k --out var/ml100k
      feedrank data validate var/mind
    """


@data.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
def validate(path: str) -> None:
    """Validate a dataset folder; print every problem (file, row, field); exit 1 if any.

    \b
    Example:
      feedrank data validate var/world
    """
    from feedrank.data.dataset import read_meta, validate_dataset
    from pathlib import Path

    problems = validate_dataset(path)
    if problems:
        for p in problems:
            click.echo(p, err=True)
        raise SystemExit(1)
    meta = read_meta(Path(path))
    click.echo(json.dumps({"valid": True, "source": meta.source, "n_items": meta.n_items,
                           "n_events": meta.n_events, "n_users": meta.n_users,
                           "events_by_kind": meta.events_by_kind}, indent=2))


data.add_command(import_group)
data.add_command(synth)
