"""`feedrank data synth`: write a synthetic world (dataset folder + ground truth)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click


def _parse_start(value: str) -> float:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO date (e.g. 2026-01-01)") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder to write (replaced if it exists).")
@click.option("--users", type=click.IntRange(1), default=20_000, show_default=True, help="Number of users.")
@click.option("--items", type=click.IntRange(1), default=5_000, show_default=True, help="Number of items (incl. a backlog published before --start).")
@click.option("--days", type=click.IntRange(1), default=14, show_default=True, help="Days simulated.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Random seed (same args -> identical files).")
@click.option("--start", default="2026-01-01", show_default=True, help="First day (ISO date, UTC).")
@click.option("--feed-len", type=click.IntRange(1, 1000), default=10, show_default=True, help="Items per feed (session).")
@click.option("--categories", type=click.IntRange(2, 1000), default=12, show_default=True, help="Number of topics.")
@click.option("--activity", type=click.FloatRange(min=0.0, min_open=True), default=0.15, show_default=True,
              help="Mean sessions per user per day.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def synth(out: str, users: int, items: int, days: int, seed: int, start: str, feed_len: int, categories: int,
          activity: float, no_progress: bool) -> None:
    """Generate a synthetic world: items, users, logged feeds with propensities, clicks,
    dwell and hides, plus its ground truth in OUT/truth/ (see docs/synthetic-world.md).

    \b
    Examples:
      feedrank data synth --out var/world --users 20000 --items 5000 --days 14 --seed 1
      feedrank data synth --out var/big --users 1000000 --items 1000000 --days 30 --activity 0.05
    """
    from feedrank.data.synth import WorldConfig, generate_world

    cfg = WorldConfig(n_users=users, n_items=items, n_days=days, seed=seed, start=_parse_start(start),
                      feed_len=feed_len, n_categories=categories, activity_mean=activity)
    summary = generate_world(out, cfg, progress=not no_progress)
    meta = summary.meta
    click.echo(json.dumps({
        "out": summary.out,
        "n_items": meta.n_items,
        "n_users_with_events": meta.n_users,
        "n_sessions": summary.n_sessions,
        "n_events": meta.n_events,
        "events_by_kind": meta.events_by_kind,
        "chunks_written": summary.n_chunks_written,
        "seconds": round(summary.seconds, 2),
    }, indent=2))
