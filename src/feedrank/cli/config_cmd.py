"""`feedrank config ...`: show the effective configuration."""

from __future__ import annotations

import click
import yaml

from feedrank.cli.common import config_options, resolve_config
from feedrank.config import config_to_dict


@click.group("config")
def config_group() -> None:
    """Inspect configuration (YAML file + dotted overrides).

    \b
    Examples:
      feedrank config show
      feedrank config show --config configs/default.yaml ranking.epochs=3
    """


@config_group.command("show")
@config_options
def show(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the effective config as YAML; every problem is listed if it is invalid.

    \b
    Examples:
      feedrank config show
      feedrank config show retrieval.index=hnsw pipeline.deadline_ms=80
    """
    cfg = resolve_config(config_path, overrides)
    click.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), nl=False)
