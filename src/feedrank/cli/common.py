"""Small helpers shared by the command modules."""

from __future__ import annotations

import click

from feedrank.config import FeedrankConfig, load_config


def config_options(f):
    """--config FILE and trailing KEY=VALUE overrides."""
    f = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="YAML config file (defaults are built in).")(f)
    f = click.argument("overrides", nargs=-1, metavar="[SECTION.KEY=VALUE]...")(f)
    return f


def resolve_config(config_path: str | None, overrides: tuple[str, ...]) -> FeedrankConfig:
    return load_config(config_path, overrides)


def say(msg: str) -> None:
    """Progress messages go to stderr so --json output stays clean."""
    click.echo(f"[feedrank] {msg}", err=True)
