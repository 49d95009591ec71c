"""The offline side: events partitioned by day in Parquet, daily aggregates, and a
point-in-time training-set builder (DuckDB ASOF JOIN).

    root/events/date=2026-11-21/part-000001-000000000.parquet
    root/features/item_daily/date=2026-11-21/part-....parquet

    exporter = LogExporter(event_log, Path("var/offline"))   # a consumer with its own offset
    exporter = LogExporter(PartitionedLog("var/events"), Path("var/offline"))  # every worker partition
    exporter.run()                                           # log -> day partitions
    daily = daily_item_aggregates(Path("var/offline/events"))
    write_feature_table(daily, Path("var/offline/features/item_daily"))
    base = baselines_from_daily(daily)                       # batch baselines:
    load_baselines(store, base)                              #   into the online store
    rt.load_baseline(base.item_id, base.impressions_per_day, base.clicks_per_day)
    train = build_training_set(Path("var/offline/events"),
                               [FeatureTable("item_daily", Path(".../item_daily"), "item_id",
                                             ("impressions", "clicks", "ctr"))])

Point in time: each impression at time ``t`` gets, from every feature table, the newest
row for its key with ``ts < t`` (strictly before: a value written at the same
millisecond is not yet visible). A feature row is stamped with the time it *became
available* (a daily aggregate of day D at the end of D), never the time it describes.

Timestamps are ``timestamp[ms, tz=UTC]`` in Parquet (as in the canonical dataset) and
epoch seconds in the returned frames' ``ts`` columns.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feedrank.errors import CorruptFile
from feedrank.features.store.protocol import OnlineStore
from feedrank.types import Event

TS_TYPE = pa.timestamp("ms", tz="UTC")
EVENT_COLUMNS = ("event_id", "ts", "user_id", "item_id", "kind", "position", "request_id", "propensity", "dwell_ms")
EVENTS_ARROW = pa.schema([
    ("event_id", pa.string()), ("ts", TS_TYPE), ("user_id", pa.string()), ("item_id", pa.string()),
    ("kind", pa.string()), ("position", pa.int64()), ("request_id", pa.string()),
    ("propensity", pa.float64()), ("dwell_ms", pa.float64()),
])


def events_frame(events: Iterable[Event]) -> pd.DataFrame:
    """Events as a DataFrame with ``EVENT_COLUMNS`` (ts in epoch seconds)."""
    rows = [(e.event_id, e.ts, e.user_id, e.item_id, getattr(e.kind, "value", str(e.kind)), e.position,
             e.request_id, e.propensity, e.dwell_ms) for e in events]
    df = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    df["position"] = df["position"].astype("Int64")
    return df


def _day(ts: np.ndarray) -> np.ndarray:
    return pd.to_datetime(ts, unit="s", utc=True).strftime("%Y-%m-%d").to_numpy(dtype=object)


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_event_partitions(events: pd.DataFrame | Iterable[Event], root: Path, part: str | None = None) -> list[Path]:
    """Write events under ``root/date=YYYY-MM-DD/part-<part>.parquet`` (UTC days), one file
    per day touched; a file of the same name is replaced (so re-running an export from the
    same offset, with a deterministic ``part``, never duplicates rows). Returns the files."""
    df = events if isinstance(events, pd.DataFrame) else events_frame(events)
    if df.empty:
        return []
    part = part or uuid.uuid4().hex[:12]
    days = _day(df["ts"].to_numpy(dtype=np.float64))
    out = []
    for day in sorted(set(days)):
        sub = df[days == day].copy()
        sub["ts"] = pd.to_datetime(sub["ts"].to_numpy(dtype=np.float64) * 1000.0, unit="ms", utc=True)
        table = pa.Table.from_pandas(sub[list(EVENT_COLUMNS)], schema=EVENTS_ARROW, preserve_index=False)
        path = Path(root) / f"date={day}" / f"part-{part}.parquet"
        _write_atomic(table, path)
        out.append(path)
    return out


class EventSource(Protocol):
    def read(self, from_offset: tuple[int, int] | None = None) -> Iterable[tuple[tuple[int, int], Event]]: ...


class LogExporter:
    """Copies an event log into day partitions; keeps its own committed offset(s) in
    ``root/_offsets/<name>.txt`` (``segment line``; a single log) or ``<name>.json``
    (``{partition: [segment, line]}``; a ``data.partitions.PartitionedLog``: every worker
    partition of a serving events folder, a partition that appears later read from its
    start), written after the files, atomically. Part files are named by their partition
    and starting offset, one batch from one partition each, so a crash between files and
    offset re-exports into the same names: no duplicates. An event that is in two
    partitions (a retry that reached two workers) is copied twice and dropped by the
    readers here, which dedupe by ``event_id``.

    A partition that fails to read (a corrupt record) is exported up to the record before
    the damage; the other partitions are exported in full, then the error is raised."""

    def __init__(self, source: EventSource, root: Path, name: str = "events", batch_size: int = 200_000) -> None:
        self.source, self.root, self.name, self.batch_size = source, Path(root), name, int(batch_size)
        self.partitioned = callable(getattr(source, "read_parts", None))
        self._offset_file = self.root / "_offsets" / f"{name}.{'json' if self.partitioned else 'txt'}"
        self.offsets: dict[str, tuple[int, int]] = {}
        if self._offset_file.exists():
            text = self._offset_file.read_text()
            if self.partitioned:
                self.offsets = {str(p): (int(o[0]), int(o[1])) for p, o in json.loads(text).items()}
            else:
                seg, line = text.split()
                self.offsets = {"": (int(seg), int(line))}

    @property
    def offset(self) -> tuple[int, int]:
        """The single log's committed offset (``offsets`` holds one per partition)."""
        return self.offsets.get("", (0, 0))

    def run(self) -> int:
        """Export everything after the offset(s); returns the number of events written."""
        if not self.partitioned:
            return self._run_part("", lambda start: self.source.read(start))
        total, error = 0, None
        for part in self.source.partitions():  # type: ignore[attr-defined]
            def read(start: tuple[int, int], part: str = part) -> Iterable[tuple[tuple[int, int], Event]]:
                for rec in self.source.read_parts({part: start}, only=(part,)):  # type: ignore[attr-defined]
                    yield rec.offset, rec.event
            try:
                total += self._run_part(part, read)
            except CorruptFile as exc:  # export the others, then say which partition is damaged
                error = error or exc
        if error is not None:
            raise error
        return total

    def _run_part(self, part: str, read) -> int:
        total = 0
        while True:
            batch: list[Event] = []
            start = self.offsets.get(part, (0, 0))
            last = None
            failure = None
            try:
                for off, ev in read(start):
                    batch.append(ev)
                    last = off
                    if len(batch) >= self.batch_size:
                        break
            except CorruptFile as exc:
                failure = exc
            if batch and last is not None:
                tag = f"{start[0]:06d}-{start[1]:09d}" if not self.partitioned else f"{part or 'root'}-{start[0]:06d}-{start[1]:09d}"
                write_event_partitions(batch, self.root / self.name, part=tag)
                self.offsets[part] = (int(last[0]), int(last[1]) + 1)
                self._commit()
                total += len(batch)
            if failure is not None:
                raise failure
            if not batch:
                return total

    def _commit(self) -> None:
        self._offset_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._offset_file.with_suffix(".tmp")
        if self.partitioned:
            tmp.write_text(json.dumps({p: list(o) for p, o in sorted(self.offsets.items())}) + "\n")
        else:
            tmp.write_text(f"{self.offset[0]} {self.offset[1]}\n")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self._offset_file)


def _glob(root: Path) -> str:
    return str(Path(root) / "date=*" / "*.parquet")


def _sql_ts(ts: float) -> str:
    return f"to_timestamp({float(ts)!r})"


def read_events(root: Path, start: float | None = None, end: float | None = None) -> pd.DataFrame:
    """Events in ``[start, end)`` (epoch s), deduplicated by event id, ordered by ts."""
    where = []
    if start is not None:
        day = datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d")
        where += [f"ts >= {_sql_ts(start)}", f"date >= '{day}'"]
    if end is not None:
        where.append(f"ts < {_sql_ts(end)}")
    sql = (f"SELECT {', '.join(EVENT_COLUMNS[:1])}, epoch_ms(ts) / 1000.0 AS ts, {', '.join(EVENT_COLUMNS[2:])} "
           f"FROM read_parquet('{_glob(root)}', hive_partitioning = true, union_by_name = true) "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} "
           "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ts) = 1 ORDER BY ts, event_id")
    with duckdb.connect() as con:
        return con.execute(sql).df()


def daily_item_aggregates(root: Path) -> pd.DataFrame:
    """Per item and UTC day: impressions, clicks, ctr (clicks/impressions, 0 if none) and
    ``ts`` = the end of that day (when the aggregate becomes available), epoch seconds."""
    sql = f"""
        WITH ev AS (
            SELECT * FROM read_parquet('{_glob(root)}', hive_partitioning = true, union_by_name = true)
            QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ts) = 1)
        SELECT item_id, CAST(date AS VARCHAR) AS date,
               epoch_ms(date_trunc('day', min(ts)) + INTERVAL 1 DAY) / 1000.0 AS ts,
               CAST(count(*) FILTER (WHERE kind = 'impression') AS DOUBLE) AS impressions,
               CAST(count(*) FILTER (WHERE kind = 'click') AS DOUBLE) AS clicks
        FROM ev GROUP BY item_id, date ORDER BY date, item_id"""
    with duckdb.connect() as con:
        df = con.execute(sql).df()
    df["ctr"] = np.where(df["impressions"] > 0, df["clicks"] / df["impressions"].where(df["impressions"] > 0, 1.0), 0.0)
    return df


def write_feature_table(df: pd.DataFrame, root: Path) -> list[Path]:
    """A feature table (key column(s), ``ts`` epoch s when available, feature columns) in
    day partitions by ``ts``: ``root/date=YYYY-MM-DD/part-<id>.parquet``."""
    if df.empty:
        return []
    days = _day(df["ts"].to_numpy(dtype=np.float64))
    out = []
    for day in sorted(set(days)):
        sub = df[days == day].drop(columns=[c for c in ("date",) if c in df.columns]).copy()
        sub["ts"] = pd.to_datetime(sub["ts"].to_numpy(dtype=np.float64) * 1000.0, unit="ms", utc=True)
        path = Path(root) / f"date={day}" / f"part-{uuid.uuid4().hex[:12]}.parquet"
        _write_atomic(pa.Table.from_pandas(sub, preserve_index=False), path)
        out.append(path)
    return out


def baselines_from_daily(daily: pd.DataFrame, days: int = 7) -> pd.DataFrame:
    """Per item, mean impressions and clicks per day over its last ``days`` days in
    ``daily`` (from ``daily_item_aggregates``): columns item_id, impressions_per_day,
    clicks_per_day, ctr, ts (when the newest aggregate became available)."""
    if daily.empty:
        return pd.DataFrame(columns=["item_id", "impressions_per_day", "clicks_per_day", "ctr", "ts"])
    recent = daily.sort_values("ts").groupby("item_id", sort=True).tail(days)
    g = recent.groupby("item_id", sort=True).agg(impressions_per_day=("impressions", "mean"),
                                                 clicks_per_day=("clicks", "mean"), ts=("ts", "max")).reset_index()
    g["ctr"] = np.where(g["impressions_per_day"] > 0, g["clicks_per_day"] / g["impressions_per_day"].where(
        g["impressions_per_day"] > 0, 1.0), 0.0)
    return g


def load_baselines(store: OnlineStore, baselines: pd.DataFrame) -> int:
    """Write batch baselines into the online store as item features ``imps_per_day``,
    ``clicks_per_day``, ``ctr_daily`` (stamped with their ``ts``). Returns rows written."""
    for ts, grp in baselines.groupby("ts"):
        store.put_items({str(r.item_id): {"imps_per_day": float(r.impressions_per_day),
                                          "clicks_per_day": float(r.clicks_per_day), "ctr_daily": float(r.ctr)}
                         for r in grp.itertuples(index=False)}, ts=float(ts))
    return len(baselines)


@dataclass(frozen=True)
class FeatureTable:
    """A point-in-time feature table: ``source`` is a folder of day partitions (as from
    ``write_feature_table``) or a DataFrame with ``ts`` in epoch seconds; ``key`` is
    ``item_id`` or ``user_id``; output columns are ``<name>_<column>`` and ``<name>_ts``."""

    name: str
    source: Path | pd.DataFrame
    key: str
    columns: tuple[str, ...]


def build_training_set(events_root: Path, tables: Sequence[FeatureTable], start: float | None = None,
                       end: float | None = None) -> pd.DataFrame:
    """One row per impression in ``[start, end)``: event columns, ``label`` (1 if a click
    with the same request and item exists), and every table's features as of strictly
    before the impression (NaN when none yet). Ordered by ts, event_id."""
    where = ["kind = 'impression'"]
    if start is not None:
        where.append(f"ts >= {_sql_ts(start)}")
    if end is not None:
        where.append(f"ts < {_sql_ts(end)}")
    with duckdb.connect() as con:
        views = []
        for i, t in enumerate(tables):
            if t.key not in ("item_id", "user_id"):
                raise ValueError(f"feature table {t.name}: key must be item_id or user_id, got {t.key!r}")
            if isinstance(t.source, pd.DataFrame):
                df = t.source.copy()
                df["ts"] = pd.to_datetime(df["ts"].to_numpy(dtype=np.float64) * 1000.0, unit="ms", utc=True)
                con.register(f"_ft{i}_df", df)
                con.execute(f"CREATE TEMP VIEW ft{i} AS SELECT * FROM _ft{i}_df")
            else:
                con.execute(f"CREATE TEMP VIEW ft{i} AS SELECT * FROM read_parquet('{_glob(t.source)}', "
                            "hive_partitioning = true, union_by_name = true)")
            views.append(f"ft{i}")
        cols = ", ".join(f"f{i}.{c} AS {t.name}_{c}" for i, t in enumerate(tables) for c in t.columns)
        cols += "".join(f", epoch_ms(f{i}.ts) / 1000.0 AS {t.name}_ts" for i, t in enumerate(tables))
        joins = " ".join(f"ASOF LEFT JOIN {v} f{i} ON imp.{tables[i].key} = f{i}.{tables[i].key} AND imp.ts > f{i}.ts"
                         for i, v in enumerate(views))
        sql = f"""
            WITH ev AS (
                SELECT * FROM read_parquet('{_glob(events_root)}', hive_partitioning = true, union_by_name = true)
                QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ts) = 1),
            clk AS (SELECT DISTINCT request_id, item_id FROM ev WHERE kind = 'click' AND request_id IS NOT NULL),
            imp AS (
                SELECT e.event_id, e.ts, e.user_id, e.item_id, e.position, e.request_id, e.propensity,
                       CAST(clk.item_id IS NOT NULL AS INTEGER) AS label
                FROM ev e LEFT JOIN clk ON e.request_id = clk.request_id AND e.item_id = clk.item_id
                WHERE {' AND '.join('e.' + w if w.startswith('ts') or w.startswith('kind') else w for w in where)})
            SELECT imp.event_id, epoch_ms(imp.ts) / 1000.0 AS ts, imp.user_id, imp.item_id, imp.position,
                   imp.request_id, imp.propensity, imp.label{', ' + cols if tables else ''}
            FROM imp {joins}
            ORDER BY imp.ts, imp.event_id"""
        return con.execute(sql).df()
