"""`feedrank features ...`: batch baselines into the online store; its live state."""

from __future__ import annotations

import json

import click

from feedrank.cli.common import say


@click.group("features")
def features_group() -> None:
    """The online feature store (docs/feature-store.md).

    \b
    Examples:
      feedrank features load --store sqlite:///var/features.db --model var/demo/full/model
      feedrank features load --store redis://127.0.0.1:6379/0 --parquet var/offline/daily
    """


@features_group.command("load")
@click.option("--store", "store_url", required=True,
              help="Online store URL: sqlite:///path or redis://host:port/db (memory:// would vanish with this command).")
@click.option("--parquet", "parquet_root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Day-partitioned events (features.offline layout): baselines = mean per day over --days.")
@click.option("--model", "model_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="A model bundle: baselines = its training snapshot's counters per day of its data.")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 365), help="With --parquet: newest days averaged.")
@click.option("--ttl-s", default=604_800.0, show_default=True, type=click.FloatRange(0.0), help="Store record TTL (as served).")
def load_cmd(store_url: str, parquet_root: str | None, model_dir: str | None, days: int, ttl_s: float) -> None:
    """Load batch baselines (daily aggregates) into the online store: what serving falls
    back to when the event stream stalls (features.stall_s). Serving also loads its
    model's baselines at start; this refreshes them from newer data.

    \b
    Examples:
      feedrank features load --store redis://127.0.0.1:6379/0 --parquet var/offline/events --days 7
      feedrank features load --store sqlite:///var/features.db --model var/model
    """
    import time
    from pathlib import Path

    from feedrank.features.live import baselines_from_daily, write_baselines
    from feedrank.features.store.factory import open_store

    if (parquet_root is None) == (model_dir is None):
        raise click.UsageError("give exactly one of --parquet DIR or --model DIR")
    if store_url.startswith("memory:"):
        raise click.UsageError("--store memory:// lives only as long as this command: use sqlite:/// or redis://")
    if parquet_root is not None:
        from feedrank.features.offline import daily_item_aggregates

        ids, imps, clicks, ts = baselines_from_daily(daily_item_aggregates(Path(parquet_root)), days)
        ts = max(ts, time.time()) if ts else time.time()
    else:
        from feedrank.pipeline.artifacts import load_artifacts
        from feedrank.serving.live_features import snapshot_baselines

        ids, imps, clicks = snapshot_baselines(load_artifacts(model_dir))
        ts = time.time()
    store = open_store(store_url, ttl_s=2 * ttl_s)
    try:
        n = write_baselines(store, ids, imps, clicks, ts)
    finally:
        store.close()
    say(f"loaded batch baselines of {n:,} items into {store_url}")
    click.echo(json.dumps({"items": n, "imps_per_day_mean": float(imps.mean()) if n else 0.0,
                           "clicks_per_day_mean": float(clicks.mean()) if n else 0.0}))
