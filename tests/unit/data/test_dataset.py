"""Canonical dataset validation: every problem names the file, the row and the field."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedrank.data.dataset import DatasetWriter, load_dataset, validate_dataset
from feedrank.errors import CorruptFile, NotFound, SchemaError

T0 = 1_767_225_600.0


def _write(out: Path, events: dict | None = None, items: dict | None = None) -> Path:
    items = items or {"item_id": ["a", "b"], "title": ["A", "B"], "category": ["x", "y"], "subcategory": ["x", "y"],
                      "creator": ["c", "c"], "published_at": [T0, np.nan]}
    events = events or {"event_id": ["e1", "e2", "e3"], "ts": [T0 + 1, T0 + 2, T0 + 3], "user_id": ["u", "u", "v"],
                        "item_id": ["a", "b", "a"], "kind": ["impression", "click", "impression"],
                        "position": np.array([0, None, 1], dtype=object), "request_id": ["r", "r", None],
                        "propensity": [0.5, None, None], "dwell_ms": [None, None, None]}
    with DatasetWriter(out, source="test") as w:
        w.write_items(items)
        w.append_events(events)
    return out


def test_round_trip(tmp_path: Path):
    ds = load_dataset(_write(tmp_path / "d"))
    assert ds.meta.n_events == 3 and ds.meta.n_items == 2 and ds.meta.n_users == 2
    assert ds.meta.events_by_kind["impression"] == 2
    ev = ds.events_frame()
    assert ev["ts"].tolist() == [T0 + 1, T0 + 2, T0 + 3]
    assert np.isnan(ds.items_frame()["published_at"].iloc[1])


def test_bad_rows_are_named(tmp_path: Path):
    events = {"event_id": ["e1", "e2", "e1", "e4"], "ts": [T0, T0, T0, 10.0], "user_id": ["u"] * 4,
              "item_id": ["a", "zz", "a", "a"], "kind": ["impression", "click", "imp", "click"],
              "position": [0, 1, -2, 0], "request_id": ["r"] * 4, "propensity": [0.5, 2.0, None, None],
              "dwell_ms": [None, None, None, -1.0]}
    out = _write(tmp_path / "d", events=events)
    problems = validate_dataset(out)
    text = "\n".join(problems)
    assert "events.parquet: row 1, field 'item_id': unknown item 'zz'" in text
    assert "events.parquet: row 2, field 'kind'" in text
    assert "events.parquet: row 2, field 'event_id': duplicate event id 'e1'" in text
    assert "events.parquet: row 3, field 'ts'" in text
    assert "events.parquet: row 2, field 'position'" in text
    assert "events.parquet: row 1, field 'propensity'" in text
    assert "events.parquet: row 3, field 'dwell_ms'" in text
    with pytest.raises(SchemaError) as exc:
        load_dataset(out)
    assert len(exc.value.problems) == len(problems)


def test_missing_column_and_wrong_type(tmp_path: Path):
    out = _write(tmp_path / "d")
    tbl = pq.read_table(out / "events.parquet")
    tbl = tbl.drop(["kind"]).set_column(tbl.schema.get_field_index("ts") , "ts", pa.array(["x", "y", "z"]))
    pq.write_table(tbl, out / "events.parquet")
    problems = validate_dataset(out)
    assert "events.parquet: missing column 'kind' (expected string)" in problems
    assert any("column 'ts' has type string" in p for p in problems)


def test_corrupt_and_missing_files(tmp_path: Path):
    out = _write(tmp_path / "d")
    (out / "items.parquet").write_bytes(b"not parquet at all")
    assert any("not a readable Parquet file" in p for p in validate_dataset(out))
    with pytest.raises(NotFound):
        load_dataset(tmp_path / "nope")
    out2 = _write(tmp_path / "d2")
    (out2 / "dataset.json").write_text("{broken")
    assert any("not valid JSON" in p for p in validate_dataset(out2))
    (out2 / "dataset.json").unlink()
    assert any("missing" in p for p in validate_dataset(out2))


def test_interrupted_write_leaves_nothing(tmp_path: Path):
    out = tmp_path / "d"
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, source="test") as w:
            w.write_items({"item_id": ["a"], "title": ["A"], "category": ["x"], "subcategory": ["x"], "creator": ["c"], "published_at": [T0]})
            raise RuntimeError("crash mid-write")
    assert not out.exists()
    assert not (tmp_path / "d.partial").exists()


def test_writer_rejects_missing_columns(tmp_path: Path):
    w = DatasetWriter(tmp_path / "d", source="test")
    with pytest.raises(SchemaError, match="missing column 'kind'"):
        w.append_events({"event_id": ["e"], "ts": [T0], "user_id": ["u"], "item_id": ["a"]})
    w.abort()
    _ = CorruptFile  # exported for callers
