"""Day partitions, the log exporter's offset, daily aggregates and the point-in-time
training-set builder (a feature change planted after an impression never leaks into it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feedrank.data.eventlog import EventLog
from feedrank.features.offline import (
    FeatureTable,
    LogExporter,
    build_training_set,
    daily_item_aggregates,
    read_events,
    write_event_partitions,
    write_feature_table,
)
from feedrank.types import Event, EventKind

DAY = 86400.0
T0 = 1_763_683_200.0  # 2025-11-21 00:00:00 UTC


def ev(eid: str, ts: float, item: str, kind: str = "impression", user: str = "u1", rid: str | None = "r1") -> Event:
    return Event(event_id=eid, ts=ts, user_id=user, item_id=item, kind=EventKind(kind), request_id=rid, position=0)


def test_partitions_by_utc_day_and_dedupes(tmp_path: Path):
    root = tmp_path / "events"
    files = write_event_partitions([ev("a", T0 + 10, "i1"), ev("b", T0 + DAY - 0.001, "i1"), ev("c", T0 + DAY, "i2")], root)
    assert sorted(p.parent.name for p in files) == ["date=2025-11-21", "date=2025-11-22"]
    write_event_partitions([ev("a", T0 + 10, "i1")], root)  # the same event exported twice
    df = read_events(root)
    assert df["event_id"].tolist() == ["a", "b", "c"]
    assert abs(df["ts"].iloc[1] - (T0 + DAY - 0.001)) < 1e-6
    assert read_events(root, start=T0 + DAY)["event_id"].tolist() == ["c"]


def test_exporter_keeps_its_offset(tmp_path: Path):
    log = EventLog(tmp_path / "log", segment_bytes=2048)
    log.append([ev(f"e{i}", T0 + i * 3600, f"i{i % 3}") for i in range(40)])
    ex = LogExporter(log, tmp_path / "offline", batch_size=15)
    assert ex.run() == 40 and ex.run() == 0
    log.append([ev(f"x{i}", T0 + 50 * 3600, "i9") for i in range(5)])
    again = LogExporter(log, tmp_path / "offline")  # a restart resumes at the committed offset
    assert again.offset == ex.offset and again.run() == 5
    df = read_events(tmp_path / "offline" / "events")
    assert len(df) == 45 and df["event_id"].is_unique
    log.close()


def test_training_set_is_point_in_time(tmp_path: Path):
    events = tmp_path / "events"
    write_event_partitions([
        ev("imp1", T0 + 100, "n1", rid="r1"),
        ev("clk1", T0 + 105, "n1", kind="click", rid="r1"),
        ev("imp2", T0 + 100, "n2", rid="r1"),
        ev("imp3", T0 + 300, "n1", rid="r2"),
        ev("imp4", T0 + 200, "n9", rid="r1"),
    ], events)
    feats = pd.DataFrame({
        "item_id": ["n1", "n1", "n1", "n2"],
        "ts": [T0 + 50, T0 + 100, T0 + 101, T0 + 99.999],   # n1 changes AT and right AFTER imp1
        "ctr": [0.1, 777.0, 999.0, 0.2],
    })
    table_dir = tmp_path / "features" / "item_ctr"
    write_feature_table(feats, table_dir)
    for source in (table_dir, feats):
        out = build_training_set(events, [FeatureTable("f", source, "item_id", ("ctr",))]).set_index("event_id")
        assert out.loc["imp1", "label"] == 1 and out.loc["imp2", "label"] == 0
        assert out.loc["imp1", "f_ctr"] == 0.1           # the planted 777/999 never leak into imp1
        assert abs(out.loc["imp1", "f_ts"] - (T0 + 50)) < 1e-6
        assert out.loc["imp2", "f_ctr"] == 0.2
        assert out.loc["imp3", "f_ctr"] == 999.0         # a later impression sees the newest
        assert np.isnan(out.loc["imp4", "f_ctr"])        # no feature row yet: NaN, row kept
        assert "clk1" not in out.index and len(out) == 4


def test_daily_aggregates_become_available_at_end_of_day(tmp_path: Path):
    events = tmp_path / "events"
    write_event_partitions([
        ev("a", T0 + 10, "n1"), ev("b", T0 + 20, "n1"), ev("c", T0 + 30, "n1", kind="click"),
        ev("d", T0 + DAY + 10, "n1"), ev("e", T0 + DAY + 20, "n1"),
    ], events)
    daily = daily_item_aggregates(events)
    assert daily["impressions"].tolist() == [2.0, 2.0] and daily["clicks"].tolist() == [1.0, 0.0]
    assert daily["ts"].tolist() == [T0 + DAY, T0 + 2 * DAY]
    out = build_training_set(events, [FeatureTable("d", daily.drop(columns=["date"]), "item_id", ("ctr", "clicks"))])
    out = out.set_index("event_id")
    assert np.isnan(out.loc["a", "d_ctr"])              # day 1's own aggregate is not visible on day 1
    assert out.loc["d", "d_ctr"] == 0.5 and out.loc["e", "d_clicks"] == 1.0


def test_batch_baselines_into_the_store(tmp_path: Path):
    from feedrank.features.offline import baselines_from_daily, load_baselines
    from feedrank.features.store import open_store

    events = tmp_path / "events"
    write_event_partitions([ev(f"a{d}-{k}", T0 + d * DAY + k, "n1") for d in range(3) for k in range(2 + d)]
                           + [ev("c", T0 + 5, "n1", kind="click")], events)
    base = baselines_from_daily(daily_item_aggregates(events), days=2)
    assert base["impressions_per_day"].tolist() == [3.5] and base["ts"].tolist() == [T0 + 3 * DAY]
    store = open_store("memory://", ttl_s=0)
    assert load_baselines(store, base) == 1
    got = store.get_items(["n1"], ["imps_per_day", "clicks_per_day"], now=T0 + 3 * DAY)
    assert got.found[0] and got.values[0].tolist() == [3.5, 0.0]
