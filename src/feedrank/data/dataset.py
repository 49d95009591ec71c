"""Reading, validating and writing canonical dataset folders (see ``schema.py``).

    ds = load_dataset("var/world")            # validates; SchemaError lists problems
    events = ds.events_frame()                 # pandas, ts as float seconds

    with DatasetWriter("var/out", source="synthetic") as w:
        w.write_items(items_table)
        for chunk in chunks:
            w.append_events(chunk)             # bounded memory: one row group per chunk
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feedrank.data.schema import (
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    SCHEMA_VERSION,
    TS_TYPE,
    USERS_SCHEMA,
    DatasetMeta,
    check_columns,
    conform,
    validate_events_chunk,
    validate_items_chunk,
)
from feedrank.errors import CorruptFile, NotFound, SchemaError
from feedrank.types import EVENT_KINDS

ITEMS_FILE = "items.parquet"
EVENTS_FILE = "events.parquet"
USERS_FILE = "users.parquet"
META_FILE = "dataset.json"
MAX_PROBLEMS = 200


@dataclass
class Dataset:
    """A loaded canonical dataset (Arrow tables, canonical column types)."""

    root: Path
    meta: DatasetMeta
    items: pa.Table
    events: pa.Table
    users: pa.Table | None

    def items_frame(self) -> pd.DataFrame:
        df = self.items.to_pandas()
        df["published_at"] = ts_to_seconds(self.items.column("published_at"))
        return df

    def events_frame(self, columns: list[str] | None = None) -> pd.DataFrame:
        tbl = self.events if columns is None else self.events.select(columns)
        df = tbl.to_pandas()
        if "ts" in df.columns:
            df["ts"] = ts_to_seconds(tbl.column("ts"))
        return df


def ts_to_seconds(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow timestamps -> float64 epoch seconds (NaN for null)."""
    ms = pc.cast(pc.cast(col, TS_TYPE), pa.int64())
    return np.asarray(pc.fill_null(pc.cast(ms, pa.float64()), float("nan"))) / 1000.0


def seconds_to_ts(seconds: Any) -> pa.Array:
    """float epoch seconds (NaN/None = null) -> Arrow ``timestamp[ms, UTC]``."""
    arr = np.asarray(seconds, dtype=np.float64)
    mask = ~np.isfinite(arr)
    ms = np.where(mask, 0, np.round(arr * 1000.0)).astype(np.int64)
    return pa.array(ms, type=pa.int64(), mask=mask).cast(TS_TYPE)


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFile(f"{path}: not a readable Parquet file: {exc}") from exc


def read_meta(root: Path) -> DatasetMeta:
    path = root / META_FILE
    if not path.exists():
        raise NotFound(f"{path}: missing (is {root} a feedrank dataset? an interrupted write leaves no {META_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{path}: not valid JSON: {exc}") from exc
    problems = []
    if raw.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"{path}: field 'schema_version': expected {SCHEMA_VERSION}, got {raw.get('schema_version')!r}")
    for key in ("source", "n_items", "n_events"):
        if key not in raw:
            problems.append(f"{path}: missing field '{key}'")
    if problems:
        raise SchemaError(f"{path}: invalid dataset metadata", problems)
    return DatasetMeta(
        schema_version=int(raw["schema_version"]),
        source=str(raw["source"]),
        n_items=int(raw["n_items"]),
        n_events=int(raw["n_events"]),
        n_users=int(raw.get("n_users", 0)),
        events_by_kind=dict(raw.get("events_by_kind", {})),
        ts_min=raw.get("ts_min"),
        ts_max=raw.get("ts_max"),
        extra=dict(raw.get("extra", {})),
    )


def validate_dataset(path: str | Path) -> list[str]:
    """Every problem found in a dataset folder (empty list = valid). Streams events."""
    root = Path(path)
    problems: list[str] = []
    if not root.is_dir():
        return [f"{root}: not a directory"]
    try:
        meta = read_meta(root)
    except SchemaError as exc:
        return exc.problems
    except (NotFound, CorruptFile) as exc:
        return [str(exc)]

    items_path = root / ITEMS_FILE
    if not items_path.exists():
        return [f"{items_path}: missing"]
    try:
        items = _read_parquet(items_path)
    except CorruptFile as exc:
        return [str(exc)]
    col_problems = check_columns(ITEMS_FILE, items.schema, ITEMS_SCHEMA)
    problems += col_problems
    known = None
    if not col_problems:
        items = conform(items, ITEMS_SCHEMA)
        problems += validate_items_chunk(items, 0)
        from feedrank.data.schema import duplicate_rows

        for r, v in duplicate_rows(items.column("item_id")):
            problems.append(f"{ITEMS_FILE}: row {r}, field 'item_id': duplicate item id {v!r}")
        known = items.column("item_id").combine_chunks()
        if meta.n_items != items.num_rows:
            problems.append(f"{META_FILE}: n_items={meta.n_items} but {ITEMS_FILE} has {items.num_rows} rows")

    events_path = root / EVENTS_FILE
    if not events_path.exists():
        return problems + [f"{events_path}: missing"]
    try:
        pf = pq.ParquetFile(events_path)
    except (pa.ArrowInvalid, OSError) as exc:
        return problems + [f"{events_path}: not a readable Parquet file: {exc}"]
    ev_col_problems = check_columns(EVENTS_FILE, pf.schema_arrow, EVENTS_SCHEMA)
    problems += ev_col_problems
    if ev_col_problems:
        return problems
    ts_range = None
    if meta.ts_min is not None and meta.ts_max is not None:
        ts_range = (float(meta.ts_min), float(meta.ts_max))
    offset = 0
    hashes = []
    try:
        for batch in pf.iter_batches(batch_size=1_000_000):
            tbl = conform(pa.Table.from_batches([batch]), EVENTS_SCHEMA)
            problems += validate_events_chunk(tbl, offset, known, ts_range)
            ids = tbl.column("event_id").to_numpy(zero_copy_only=False)
            hashes.append(pd.util.hash_array(ids.astype(object)))
            offset += tbl.num_rows
            if len(problems) > MAX_PROBLEMS:
                problems.append(f"{EVENTS_FILE}: stopped after {MAX_PROBLEMS} problems")
                return problems
    except (pa.ArrowInvalid, OSError) as exc:
        return problems + [f"{events_path}: corrupt at row {offset}: {exc}"]
    if hashes:
        problems += _duplicate_event_problems(pf, np.concatenate(hashes))
    if meta.n_events != offset:
        problems.append(f"{META_FILE}: n_events={meta.n_events} but {EVENTS_FILE} has {offset} rows")

    users_path = root / USERS_FILE
    if users_path.exists():
        try:
            users = _read_parquet(users_path)
            up = check_columns(USERS_FILE, users.schema, USERS_SCHEMA)
            problems += up
            if not up:
                from feedrank.data.schema import duplicate_rows

                for r, v in duplicate_rows(users.column("user_id").cast(pa.string())):
                    problems.append(f"{USERS_FILE}: row {r}, field 'user_id': duplicate user id {v!r}")
        except CorruptFile as exc:
            problems.append(str(exc))
    return problems


def _duplicate_event_problems(pf: pq.ParquetFile, hashes: np.ndarray, limit: int = 5) -> list[str]:
    order = np.argsort(hashes, kind="stable")
    sh = hashes[order]
    dup_pos = np.flatnonzero(sh[1:] == sh[:-1]) + 1
    if len(dup_pos) == 0:
        return []
    rows = np.sort(order[dup_pos])[: limit * 4]
    ids = pf.read(columns=["event_id"]).column("event_id")
    out = []
    for r in rows:
        h = hashes[r]
        first = int(np.flatnonzero(hashes == h)[0])
        if ids[first].as_py() == ids[int(r)].as_py():
            out.append(f"{EVENTS_FILE}: row {int(r)}, field 'event_id': duplicate event id {ids[int(r)].as_py()!r} (first at row {first})")
        if len(out) >= limit:
            break
    return out


def load_dataset(path: str | Path, validate: bool = True) -> Dataset:
    """Load a dataset folder; with ``validate`` raise SchemaError listing every problem."""
    root = Path(path)
    if not root.exists():
        raise NotFound(f"dataset folder not found: {root}")
    if validate:
        problems = validate_dataset(root)
        if problems:
            raise SchemaError(f"dataset {root} is invalid ({len(problems)} problem(s))", problems)
    meta = read_meta(root)
    items = conform(_read_parquet(root / ITEMS_FILE), ITEMS_SCHEMA)
    events = conform(_read_parquet(root / EVENTS_FILE), EVENTS_SCHEMA)
    users = None
    if (root / USERS_FILE).exists():
        users = _read_parquet(root / USERS_FILE)
        users = users.set_column(0, "user_id", users.column("user_id").cast(pa.string())) if users.column_names[0] == "user_id" else users
    return Dataset(root=root, meta=meta, items=items, events=events, users=users)


def _to_table(data: pa.Table | pd.DataFrame | dict, schema: pa.Schema, fname: str) -> pa.Table:
    """Accept a table, DataFrame or dict of columns; timestamp columns may be float seconds."""
    if isinstance(data, pd.DataFrame):
        data = {c: data[c].to_numpy() for c in data.columns}
    if isinstance(data, dict):
        cols = {}
        for name, values in data.items():
            f = schema.field(name) if schema.get_field_index(name) >= 0 else None
            if f is not None and pa.types.is_timestamp(f.type) and not isinstance(values, (pa.Array, pa.ChunkedArray)):
                cols[name] = seconds_to_ts(values)
            elif isinstance(values, (pa.Array, pa.ChunkedArray)):
                cols[name] = values
            else:
                arr = np.asarray(values)
                if arr.dtype == object:
                    cols[name] = pa.array(list(arr), from_pandas=True)
                else:
                    cols[name] = pa.array(arr)
        data = pa.table(cols)
    missing = [f"{fname}: missing column '{f.name}'" for f in schema if f.name not in data.column_names]
    problems = missing or check_columns(fname, data.schema, schema)
    if problems:
        raise SchemaError(f"cannot write {fname}", problems)
    return conform(data, schema)


class DatasetWriter:
    """Writes a dataset folder with bounded memory; ``dataset.json`` is written last.

    The folder is built under ``<out>.partial`` and renamed into place by ``close()``, so
    a crash never leaves something that looks like a complete dataset.
    """

    def __init__(self, out: str | Path, source: str, overwrite: bool = True, extra: dict | None = None) -> None:
        self.out = Path(out)
        self.source = source
        self.extra = dict(extra or {})
        if self.out.exists() and not overwrite:
            raise SchemaError(f"{self.out} exists (pass overwrite=True to replace it)")
        self.tmp = self.out.with_name(self.out.name + ".partial")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self._events_writer: pq.ParquetWriter | None = None
        self._events_schema: pa.Schema | None = None
        self._n_items = 0
        self._n_events = 0
        self._n_users = 0
        self._kinds: dict[str, int] = {k: 0 for k in EVENT_KINDS}
        self._ts_min = np.inf
        self._ts_max = -np.inf
        self._user_hashes: list[np.ndarray] = []
        self._closed = False

    def write_items(self, data: pa.Table | pd.DataFrame | dict) -> None:
        tbl = _to_table(data, ITEMS_SCHEMA, ITEMS_FILE)
        pq.write_table(tbl, self.tmp / ITEMS_FILE, compression="zstd")
        self._n_items = tbl.num_rows

    def write_users(self, data: pa.Table | pd.DataFrame | dict) -> None:
        tbl = _to_table(data, USERS_SCHEMA, USERS_FILE)
        pq.write_table(tbl, self.tmp / USERS_FILE, compression="zstd")

    def append_events(self, data: pa.Table | pd.DataFrame | dict) -> None:
        tbl = _to_table(data, EVENTS_SCHEMA, EVENTS_FILE)
        if tbl.num_rows == 0:
            return
        if self._events_writer is None:
            self._events_schema = tbl.schema
            self._events_writer = pq.ParquetWriter(self.tmp / EVENTS_FILE, tbl.schema, compression="zstd")
        elif tbl.schema != self._events_schema:
            tbl = tbl.select(self._events_schema.names).cast(self._events_schema)
        self._events_writer.write_table(tbl, row_group_size=1_000_000)
        self._n_events += tbl.num_rows
        ts = ts_to_seconds(tbl.column("ts"))
        self._ts_min = min(self._ts_min, float(np.nanmin(ts)))
        self._ts_max = max(self._ts_max, float(np.nanmax(ts)))
        vc = pc.value_counts(tbl.column("kind"))
        for entry in vc.to_pylist():
            self._kinds[entry["values"]] = self._kinds.get(entry["values"], 0) + int(entry["counts"])
        # distinct users: hash only this chunk's distinct ids (Arrow does the dedupe)
        users = pc.unique(tbl.column("user_id")).to_numpy(zero_copy_only=False).astype(object)
        self._user_hashes.append(np.unique(pd.util.hash_array(users)))
        if len(self._user_hashes) > 16:
            self._user_hashes = [np.unique(np.concatenate(self._user_hashes))]

    def close(self) -> DatasetMeta:
        if self._closed:
            raise RuntimeError("DatasetWriter already closed")
        if self._events_writer is None:
            empty = EVENTS_SCHEMA.empty_table()
            pq.write_table(empty, self.tmp / EVENTS_FILE)
        else:
            self._events_writer.close()
        if not (self.tmp / ITEMS_FILE).exists():
            raise SchemaError(f"{self.out}: no items written")
        n_users = len(np.unique(np.concatenate(self._user_hashes))) if self._user_hashes else 0
        meta = DatasetMeta(
            schema_version=SCHEMA_VERSION,
            source=self.source,
            n_items=self._n_items,
            n_events=self._n_events,
            n_users=n_users,
            events_by_kind=self._kinds,
            ts_min=None if self._n_events == 0 else self._ts_min,
            ts_max=None if self._n_events == 0 else self._ts_max,
            extra=self.extra,
        )
        (self.tmp / META_FILE).write_text(json.dumps(asdict(meta), indent=2, sort_keys=True))
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        self._closed = True
        return meta

    def abort(self) -> None:
        if self._events_writer is not None:
            self._events_writer.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()
