"""The offline exporter over every worker partition: per-partition offsets, a crash
between files and offsets re-exports without duplicates, a partition added later, and a
corrupt record in one partition."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feedrank.data.eventlog import EventLog
from feedrank.data.partitions import PartitionCorrupt, PartitionedLog
from feedrank.features.offline import LogExporter, read_events
from feedrank.types import Event, EventKind

DAY = 86400.0
T0 = 1_763_683_200.0  # 2025-11-21 00:00:00 UTC


def ev(eid: str, ts: float) -> Event:
    return Event(event_id=eid, ts=ts, user_id="u1", item_id="i1", kind=EventKind.IMPRESSION, request_id="r", position=0)


def rows(root: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in root.glob("date=*/*.parquet"))


def test_exporter_copies_every_partition_once(tmp_path: Path):
    events, out = tmp_path / "events", tmp_path / "offline"
    with EventLog(events / "w0") as w0, EventLog(events / "w1") as w1:
        w0.append([ev(f"a{i}", T0 + i * 3600) for i in range(30)])   # crosses a day
        w1.append([ev(f"b{i}", T0 + i * 3600 + 1) for i in range(20)])
        w1.append([ev("a5", T0 + 5 * 3600)])                        # a retry that reached the other worker
    ex = LogExporter(PartitionedLog(events), out, batch_size=8)
    assert ex.run() == 51
    assert json.loads((out / "_offsets" / "events.json").read_text()) == {"w0": [1, 30], "w1": [1, 21]}
    assert len(read_events(out / "events")) == 50                   # readers dedupe by event id
    # a crash after the files, before the offsets: the next run rewrites the same files
    (out / "_offsets" / "events.json").write_text(json.dumps({"w0": [1, 16]}))
    with EventLog(events / "w2") as w2:                             # and a worker added later
        w2.append([ev("c0", T0 + 2 * DAY)])
    n_before = rows(out / "events")
    again = LogExporter(PartitionedLog(events), out, batch_size=8)
    assert again.offsets == {"w0": (1, 16)}
    assert again.run() == 14 + 21 + 1
    assert rows(out / "events") == n_before + 1                     # only c0 is new on disk
    assert sorted(read_events(out / "events")["event_id"]) == sorted([f"a{i}" for i in range(30)] +
                                                                    [f"b{i}" for i in range(20)] + ["c0"])
    assert LogExporter(PartitionedLog(events), out).run() == 0


def test_exporter_exports_the_healthy_partitions_before_reporting_a_corrupt_one(tmp_path: Path, corrupt_line):
    events, out = tmp_path / "events", tmp_path / "offline"
    with EventLog(events / "w0") as w0, EventLog(events / "w1") as w1:
        w0.append([ev(f"a{i}", T0 + i) for i in range(5)])
        w1.append([ev(f"b{i}", T0 + i) for i in range(5)])
    corrupt_line(events / "w0" / "seg-000001.jsonl", 2)
    ex = LogExporter(PartitionedLog(events), out)
    with pytest.raises(PartitionCorrupt, match=r"'w0'.*segment 1, line 2"):
        ex.run()
    assert ex.offsets == {"w0": (1, 2), "w1": (1, 5)}
    assert sorted(read_events(out / "events")["event_id"]) == ["a0", "a1", "b0", "b1", "b2", "b3", "b4"]
