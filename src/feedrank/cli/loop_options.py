"""Options shared by the feedback-loop commands (`feedrank retrain`, `feedrank simulate`):
where the live registry, its event log and the base dataset are."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import click

F = TypeVar("F", bound=Callable)


def registry_options(required: bool, registry_help: str, data_help: str) -> Callable[[F], F]:
    """--registry (``registry_dir``), --events (``events_dir``) and --data (``base_data``)."""

    def decorate(f: F) -> F:
        # click shows options in decorator order: applied bottom-up, so --registry goes last
        f = click.option("--data", "base_data", default=None, type=click.Path(exists=True, file_okay=False),
                         help=data_help)(f)
        f = click.option("--events", "events_dir", default=None, type=click.Path(file_okay=False),
                         help="The server's event log folder [default: REGISTRY/events].")(f)
        return click.option("--registry", "registry_dir", required=required, default=None,
                            type=click.Path(exists=True, file_okay=False), help=registry_help)(f)

    return decorate


def events_dir_of(registry_dir: str, events_dir: str | None) -> str:
    """The event log folder: --events, or the registry's ``events/``."""
    return events_dir or str(Path(registry_dir) / "events")
