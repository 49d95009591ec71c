"""The canonical dataset schema (Arrow) and pure, chunk-wise validation.

A dataset is a folder:

    items.parquet    item_id, title, category, subcategory, creator, published_at (+ extra columns)
    events.parquet   event_id, ts, user_id, item_id, kind, position, request_id, propensity, dwell_ms
    users.parquet    user_id (+ extra columns), optional
    dataset.json     schema_version, source, counts, time range

Timestamps are ``timestamp[ms, tz=UTC]`` in Parquet and float epoch seconds in records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feedrank.types import EVENT_KINDS

SCHEMA_VERSION = 1
TS_TYPE = pa.timestamp("ms", tz="UTC")
# Plausible wall-clock range for any event or publish time: 1990-01-01 .. 2100-01-01.
TS_MIN_S = 631_152_000.0
TS_MAX_S = 4_102_444_800.0

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("category", pa.string()),
        pa.field("subcategory", pa.string()),
        pa.field("creator", pa.string()),
        pa.field("published_at", TS_TYPE),
    ]
)

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("position", pa.int32()),
        pa.field("request_id", pa.string()),
        pa.field("propensity", pa.float64()),
        pa.field("dwell_ms", pa.float64()),
    ]
)

USERS_SCHEMA = pa.schema([pa.field("user_id", pa.string(), nullable=False)])

REQUIRED_NOT_NULL = {
    "items.parquet": ("item_id",),
    "events.parquet": ("event_id", "ts", "user_id", "item_id", "kind"),
    "users.parquet": ("user_id",),
}


@dataclass(frozen=True)
class DatasetMeta:
    """Contents of ``dataset.json``."""

    schema_version: int
    source: str
    n_items: int
    n_events: int
    n_users: int
    events_by_kind: dict[str, int]
    ts_min: float | None
    ts_max: float | None
    extra: dict


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected or pa.types.is_null(actual):
        return True
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_dictionary(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    return False


def check_columns(fname: str, schema: pa.Schema, expected: pa.Schema) -> list[str]:
    """Missing columns and wrong column types, one problem each."""
    problems = []
    for f in expected:
        idx = schema.get_field_index(f.name)
        if idx < 0:
            problems.append(f"{fname}: missing column '{f.name}' (expected {f.type})")
            continue
        actual = schema.field(idx).type
        if not _type_ok(actual, f.type):
            problems.append(f"{fname}: column '{f.name}' has type {actual}, expected {f.type}")
    return problems


def conform(table: pa.Table, expected: pa.Schema) -> pa.Table:
    """Cast the expected columns to their canonical types (keeping extra columns)."""
    cols = []
    names = []
    for f in expected:
        col = table.column(f.name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_timestamp(f.type) and col.type != f.type:
            col = pc.cast(col, f.type)
        elif col.type != f.type:
            col = col.cast(f.type)
        cols.append(col)
        names.append(f.name)
    for name in table.column_names:
        if name not in names:
            cols.append(table.column(name))
            names.append(name)
    return pa.table(cols, names=names)


def _rows(mask: np.ndarray, offset: int, limit: int = 5) -> list[int]:
    return [int(i) + offset for i in np.flatnonzero(mask)[:limit]]


def _null_problems(fname: str, batch: pa.RecordBatch | pa.Table, offset: int) -> list[str]:
    problems = []
    for name in REQUIRED_NOT_NULL[fname]:
        col = batch.column(batch.schema.get_field_index(name))
        if col.null_count:
            mask = np.asarray(pc.is_null(col))
            for r in _rows(mask, offset):
                problems.append(f"{fname}: row {r}, field '{name}': null in a required field")
    return problems


def _ts_seconds(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 epoch seconds, NaN for nulls."""
    ms = pc.cast(pc.cast(col, TS_TYPE), pa.int64())
    return np.asarray(pc.fill_null(pc.cast(ms, pa.float64()), float("nan"))) / 1000.0


def validate_items_chunk(batch: pa.RecordBatch | pa.Table, offset: int) -> list[str]:
    fname = "items.parquet"
    problems = _null_problems(fname, batch, offset)
    pub = _ts_seconds(batch.column(batch.schema.get_field_index("published_at")))
    bad = ~np.isnan(pub) & ((pub < TS_MIN_S) | (pub >= TS_MAX_S))
    for r in _rows(bad, offset):
        problems.append(f"{fname}: row {r}, field 'published_at': timestamp {pub[r - offset]:.0f}s out of range (1990..2100)")
    return problems


def validate_events_chunk(
    batch: pa.RecordBatch | pa.Table,
    offset: int,
    known_items: pa.Array | None,
    ts_range: tuple[float, float] | None = None,
) -> list[str]:
    """Problems in one chunk of events: nulls, kinds, ranges, unknown items, time range."""
    fname = "events.parquet"
    problems = _null_problems(fname, batch, offset)
    idx = batch.schema.get_field_index

    kind = batch.column(idx("kind"))
    bad_kind = np.asarray(pc.fill_null(pc.invert(pc.is_in(kind, value_set=pa.array(EVENT_KINDS))), False))
    for r in _rows(bad_kind, offset):
        problems.append(f"{fname}: row {r}, field 'kind': {kind[r - offset].as_py()!r} is not one of {list(EVENT_KINDS)}")

    ts = _ts_seconds(batch.column(idx("ts")))
    lo, hi = TS_MIN_S, TS_MAX_S
    if ts_range is not None:  # the range dataset.json declares, within the plausible one
        lo, hi = max(lo, ts_range[0]), min(hi, ts_range[1])
    bad_ts = ~np.isnan(ts) & ((ts < lo) | (ts > hi))
    for r in _rows(bad_ts, offset):
        problems.append(f"{fname}: row {r}, field 'ts': timestamp {ts[r - offset]:.3f}s out of range [{lo:.0f}, {hi:.0f}]")

    pos = batch.column(idx("position"))
    bad_pos = np.asarray(pc.fill_null(pc.less(pos, 0), False))
    for r in _rows(bad_pos, offset):
        problems.append(f"{fname}: row {r}, field 'position': negative position {pos[r - offset].as_py()}")

    prop = batch.column(idx("propensity"))
    propv = np.asarray(pc.fill_null(pc.cast(prop, pa.float64()), 0.5))
    bad_prop = ~np.isfinite(propv) | (propv <= 0) | (propv > 1)
    for r in _rows(bad_prop, offset):
        problems.append(f"{fname}: row {r}, field 'propensity': {float(propv[r - offset])!r} not in (0, 1]")

    dwell = np.asarray(pc.fill_null(pc.cast(batch.column(idx("dwell_ms")), pa.float64()), 0.0))
    bad_dwell = ~np.isfinite(dwell) | (dwell < 0)
    for r in _rows(bad_dwell, offset):
        problems.append(f"{fname}: row {r}, field 'dwell_ms': {float(dwell[r - offset])!r} must be a finite number >= 0")

    if known_items is not None:
        items = batch.column(idx("item_id"))
        unknown = np.asarray(pc.fill_null(pc.invert(pc.is_in(items, value_set=known_items)), False))
        for r in _rows(unknown, offset):
            problems.append(f"{fname}: row {r}, field 'item_id': unknown item {items[r - offset].as_py()!r} (not in items.parquet)")
    return problems


def duplicate_rows(values: pa.ChunkedArray | pa.Array, limit: int = 5) -> list[tuple[int, str]]:
    """(row, value) of the first duplicated values (second and later occurrences)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if len(arr) == 0:
        return []
    codes = np.asarray(pc.fill_null(pc.cast(arr.dictionary_encode().indices, pa.int64()), -1))
    _, first = np.unique(codes, return_index=True)
    if len(first) == len(codes):
        return []
    is_first = np.zeros(len(codes), dtype=bool)
    is_first[first] = True
    dup = np.flatnonzero(~is_first)[:limit]
    return [(int(r), arr[int(r)].as_py()) for r in dup]
