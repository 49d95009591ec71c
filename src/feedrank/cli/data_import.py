"""`feedrank data import ...`: public data sets -> canonical dataset folders.

Each command prints a short JSON summary (counts, time range, seconds taken) on stdout;
progress bars go to stderr. Errors are FeedrankError subclasses (``cli/main.py`` prints
them and exits 2): NotFound for a missing folder or file, SchemaError listing every
malformed line (file, line, field) or naming the files an unknown layout lacked.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from feedrank.data.schema import DatasetMeta


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def summary(meta: DatasetMeta, out: Path, seconds: float) -> dict:
    """The JSON-able summary a CLI import prints."""
    return {
        "source": meta.source,
        "out": str(out),
        "n_items": meta.n_items,
        "n_users": meta.n_users,
        "n_events": meta.n_events,
        "events_by_kind": {k: v for k, v in meta.events_by_kind.items() if v},
        "ts_min": _iso(meta.ts_min),
        "ts_max": _iso(meta.ts_max),
        "seconds": round(seconds, 2),
        "extra": meta.extra,
    }


@click.group("import")
def import_group() -> None:
    """Import external datasets into the canonical format.

    \b
    Examples:
      feedrank data import mind ../shared/data/MIND/MINDsmall_train --out var/mind
      feedrank data import movielens ../shared/data/MovieLens/ml-100k --out var/ml100k
    """


@import_group.command("mind")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write (replaced).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar on stderr.")
def mind_cmd(src: Path, out: Path, progress: bool) -> None:
    """Import a MIND split folder (behaviors.tsv + news.tsv) from SRC.

    Shown items become impression events (0-based position, request_id
    mind-<impression_id>), clicked ones also click events (+1 s), history
    clicks become click events before the user's first impression.

    \b
    Example:
      feedrank data import mind ../shared/data/MIND/MINDsmall_train --out var/mind
      feedrank data validate var/mind
    """
    from feedrank.data.importers.mind import import_mind

    t0 = time.perf_counter()
    meta = import_mind(src, out, progress=progress)
    click.echo(json.dumps(summary(meta, out, time.perf_counter() - t0), indent=2))


@import_group.command("movielens")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write (replaced).")
@click.option("--min-rating", type=float, default=0.0, show_default=True,
              help="Keep ratings >= this as click events (e.g. 4 for 'liked').")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar on stderr.")
def movielens_cmd(src: Path, out: Path, min_rating: float, progress: bool) -> None:
    """Import a MovieLens folder from SRC (ml-100k, ml-1m, or a csv release such
    as ml-latest-small; the layout is detected from the files).

    \b
    Example:
      feedrank data import movielens ../shared/data/MovieLens/ml-100k --out var/ml100k
      feedrank data import movielens ../shared/data/MovieLens/ml-latest-small \\
          --out var/ml-latest --min-rating 4
    """
    from feedrank.data.importers.movielens import import_movielens

    t0 = time.perf_counter()
    meta = import_movielens(src, out, min_rating=min_rating, progress=progress)
    click.echo(json.dumps(summary(meta, out, time.perf_counter() - t0), indent=2))
