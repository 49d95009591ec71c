"""The training set of a retrain: base dataset + the live event log + live item adds.

    data = build_retrain_dataset(base="var/world", events_dir="var/registry/events",
                                 champion=art, out="var/registry/retrain/dataset")
    data.n_new_events        # log events after the champion's training cut-off

The champion was trained on events up to its cut-off (the newest event of its data,
``info.split.test.ts_max``). A retrain reads every event of the server's log, every
worker partition of it (``PartitionedLog``, read-only: the server keeps writing), counts those after the cut-off as
new, and writes one canonical dataset folder: the base dataset's events plus the log's
(deduplicated by event id, sorted by time), and the items of the base dataset, the
champion's catalogue and ``items.jsonl`` (items added live with ``POST /v1/items``; the
last record of an id wins). Everything downstream (time split, point-in-time features)
is the ordinary training path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from feedrank.data.dataset import DatasetWriter, load_dataset
from feedrank.data.itemlog import ITEM_LOG, ItemLog, StampedItem, order_items
from feedrank.data.partitions import PartitionedLog, partition_roots
from feedrank.errors import NotFound
from feedrank.pipeline.artifacts import ModelArtifacts

EVENT_COLUMNS = ("event_id", "ts", "user_id", "item_id", "kind", "position", "request_id", "propensity", "dwell_ms")
ITEM_COLUMNS = ("item_id", "title", "category", "subcategory", "creator", "published_at")


@dataclass(frozen=True)
class RetrainData:
    """What went into a retrain's training set."""

    path: str                 # the dataset folder written
    base: str | None          # base dataset folder (None: log only)
    cutoff_ts: float | None   # the champion's newest training event
    n_base_events: int
    n_log_events: int
    n_new_events: int         # log events with ts > cutoff_ts
    n_events: int             # events in the dataset written (deduplicated)
    n_items: int
    n_items_added: int        # items from items.jsonl
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def champion_cutoff(art: ModelArtifacts) -> float | None:
    """The time of the newest event the champion was trained (and tested) on."""
    split = art.info.get("split") or {}
    for side in ("test", "train"):
        ts = (split.get(side) or {}).get("ts_max")
        if ts is not None:
            return float(ts)
    return None


def base_dataset_of(art: ModelArtifacts) -> str | None:
    """The base dataset a champion descends from (a retrained bundle remembers its
    original base; a first model's base is the dataset it was trained on)."""
    retrain = art.info.get("retrain") or {}
    if retrain.get("base_data"):
        return str(retrain["base_data"])
    path = (art.info.get("dataset") or {}).get("path")
    return str(path) if path else None


def read_log_frame(events_dir: str | Path) -> pd.DataFrame:
    """Every committed event of the log at ``events_dir`` and of its worker partitions
    (``w0``, ``w1``, ...: a multi-worker server's, data/partitions.py), each event id once,
    as a frame (EVENT_COLUMNS, ts in float seconds). Opens the logs read-only: a live
    server may keep appending. A corrupt record raises ``PartitionCorrupt`` naming the
    partition and offset (a retrain must not train on a log with a hole in it)."""
    root = Path(events_dir)
    if not root.is_dir():
        raise NotFound(f"event log folder not found: {root} (the server's serving.events_dir)")
    cols: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
    with PartitionedLog(root) as log:
        for e in log.read_all():
            cols["event_id"].append(e.event_id)
            cols["ts"].append(e.ts)
            cols["user_id"].append(e.user_id)
            cols["item_id"].append(e.item_id)
            cols["kind"].append(e.kind.value)
            cols["position"].append(e.position)
            cols["request_id"].append(e.request_id)
            cols["propensity"].append(e.propensity)
            cols["dwell_ms"].append(e.dwell_ms)
    df = pd.DataFrame(cols)
    df["ts"] = df["ts"].astype(np.float64)
    df["position"] = pd.array(df["position"], dtype="Int32")
    for c in ("propensity", "dwell_ms"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
    return df


def read_item_log(events_dir: str | Path, default_published: Callable[[str], float]) -> pd.DataFrame:
    """Items added live (``items.jsonl`` of the events folder and of each worker
    partition), the newest record per id (by its ``logged_at``; records without one count
    as older, in partition order); a missing ``published_at`` becomes the record's
    ``logged_at`` (as serving publishes it: ``serving.item_sync``), else
    ``default_published(item_id)``."""
    root = Path(events_dir)
    paths = [p / ITEM_LOG for p in (partition_roots(root) if root.is_dir() else [])]
    # the serving reader (a corrupt or torn line is logged and skipped), in its one order
    rows: dict[str, StampedItem] = {}
    for s in order_items(ItemLog(p).read_from(0).items for p in paths if p.exists()):
        if s.record["item_id"]:
            rows[s.record["item_id"]] = s
    out = pd.DataFrame([{c: s.record.get(c) for c in ITEM_COLUMNS} for s in rows.values()], columns=list(ITEM_COLUMNS))
    if len(out):
        for c in ("title", "category", "subcategory", "creator"):
            out[c] = out[c].astype(object).where(out[c].notna(), "unknown" if c != "title" else "")
        pub = np.array(pd.to_numeric(out["published_at"], errors="coerce"), dtype=np.float64)  # a writable copy
        logged = np.array([s.logged_at for s in rows.values()], dtype=np.float64)
        pub = np.where(~np.isfinite(pub) & (logged > 0), logged, pub)
        missing = ~np.isfinite(pub)
        pub[missing] = [default_published(i) for i in out["item_id"][missing]]
        out["published_at"] = pub
    return out


def _items_union(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if f is not None and len(f)]
    cols = list(ITEM_COLUMNS) + (["creator_group"] if any("creator_group" in f.columns for f in frames) else [])
    items = pd.concat([f.reindex(columns=cols) for f in frames], ignore_index=True)
    if "creator_group" in items.columns:
        items["creator_group"] = items["creator_group"].astype(object).where(items["creator_group"].notna(), "established")
    items = items.drop_duplicates("item_id", keep="last").reset_index(drop=True)
    items["published_at"] = pd.to_numeric(items["published_at"], errors="coerce").astype(np.float64)
    return items


def build_retrain_dataset(base: str | Path | None, events_dir: str | Path, champion: ModelArtifacts, out: str | Path,
                          say: Callable[[str], None] = print) -> RetrainData:
    """Write the merged dataset folder ``out`` (replaced) and say what went into it."""
    t0 = time.perf_counter()
    cutoff = champion_cutoff(champion)
    log_events = read_log_frame(events_dir)
    n_new = int((log_events["ts"] > cutoff).sum()) if cutoff is not None else len(log_events)
    base_events, base_items = None, None
    if base is not None:
        ds = load_dataset(base, validate=False)
        base_events = ds.events_frame(list(EVENT_COLUMNS))
        base_items = ds.items_frame()
    first_seen = log_events.groupby("item_id")["ts"].min().to_dict() if len(log_events) else {}
    now = time.time()
    added = read_item_log(events_dir, lambda i: float(first_seen.get(i, now)))
    items = _items_union([base_items, champion.items, added])
    events = log_events if base_events is None else pd.concat([base_events, log_events], ignore_index=True)
    events = events.drop_duplicates("event_id", keep="first")
    known = set(items["item_id"].tolist())
    unknown = ~events["item_id"].isin(known)
    if unknown.any():
        say(f"retrain data: dropping {int(unknown.sum()):,} events of items in no catalogue")
        events = events[~unknown]
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    src = "retrain" if base is None else f"retrain+{load_dataset(base, validate=False).meta.source}"
    with DatasetWriter(out, source=src, extra={"base": None if base is None else str(base), "events_dir": str(events_dir),
                                                 "cutoff_ts": cutoff}) as w:
        w.write_items(items.reset_index(drop=True))
        w.append_events(pa.Table.from_pandas(_with_ts(events), preserve_index=False))
    data = RetrainData(path=str(out), base=None if base is None else str(base), cutoff_ts=cutoff,
                       n_base_events=0 if base_events is None else len(base_events), n_log_events=len(log_events),
                       n_new_events=n_new, n_events=len(events), n_items=len(items), n_items_added=len(added), seconds=time.perf_counter() - t0)
    say(f"retrain data: {data.n_base_events:,} base + {data.n_log_events:,} log events ({n_new:,} after the champion's "
        f"cut-off), {data.n_items:,} items ({data.n_items_added} added live) -> {out} ({data.seconds:.1f}s)")
    return data


def _with_ts(events: pd.DataFrame) -> pd.DataFrame:
    """Frame with ``ts`` as a UTC millisecond timestamp (the canonical Parquet type)."""
    out = events.reindex(columns=list(EVENT_COLUMNS)).copy()
    out["ts"] = pd.to_datetime(np.round(out["ts"].to_numpy(dtype=np.float64) * 1000).astype(np.int64), unit="ms", utc=True)
    out["position"] = pd.array(out["position"], dtype="Int32")
    return out
