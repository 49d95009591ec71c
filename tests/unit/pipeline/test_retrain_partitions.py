"""The retrain's training data from a multi-worker server's events folder: every
partition's events once, every partition's live item adds (newest record wins), and a
clear error for a corrupt partition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedrank.data.eventlog import EventLog
from feedrank.data.partitions import PartitionCorrupt
from feedrank.pipeline.retrain_data import read_item_log, read_log_frame
from feedrank.serving.ingest import ItemLog, replay_items
from feedrank.types import Event, EventKind

T0 = 1_714_000_000.0


def ev(eid: str, ts: float, kind: EventKind = EventKind.IMPRESSION) -> Event:
    return Event(event_id=eid, ts=ts, user_id="u1", item_id="n1", kind=kind, position=0, request_id="r1")


def test_log_frame_reads_the_root_and_every_worker_partition_once(tmp_path: Path):
    with EventLog(tmp_path) as root, EventLog(tmp_path / "w0") as w0, EventLog(tmp_path / "w1") as w1:
        root.append([ev("r0", T0)])                              # an earlier single-process run
        w0.append([ev(f"a{i}", T0 + 2 * i) for i in range(10)])
        w1.append([ev(f"b{i}", T0 + 2 * i + 1) for i in range(10)])
        w1.append([ev("a3", T0 + 6)])                            # a retry that reached both workers
    df = read_log_frame(tmp_path)
    assert len(df) == 21 and df["event_id"].is_unique
    assert set(df["event_id"]) == {"r0"} | {f"a{i}" for i in range(10)} | {f"b{i}" for i in range(10)}


def test_log_frame_names_a_corrupt_partition(tmp_path: Path, corrupt_line):
    with EventLog(tmp_path / "w0") as w0, EventLog(tmp_path / "w1") as w1:
        w0.append([ev(f"a{i}", T0 + i) for i in range(4)])
        w1.append([ev(f"b{i}", T0 + i) for i in range(4)])
    corrupt_line(tmp_path / "w1" / "seg-000001.jsonl", 1)
    with pytest.raises(PartitionCorrupt, match=r"partition 'w1'.*segment 1, line 1"):
        read_log_frame(tmp_path)


def test_item_adds_of_every_worker_newest_record_wins(tmp_path: Path):
    clock = iter([100.0, 200.0, 300.0]).__next__
    ItemLog(tmp_path / "w1" / "items.jsonl", clock).append([{"item_id": "n9", "title": "first", "category": "news"}])
    ItemLog(tmp_path / "w0" / "items.jsonl", clock).append([{"item_id": "n9", "title": "second", "category": "news"},
                                                           {"item_id": "n7", "title": "other"}])
    ItemLog(tmp_path / "w1" / "items.jsonl", clock).append([{"item_id": "n7", "title": "other, updated"}])
    (tmp_path / "w0" / "items.jsonl").open("ab").write(b'{"item_id": "torn')  # a crash mid-write
    for w in ("w0", "w1"):
        EventLog(tmp_path / w).close()
    items = read_item_log(tmp_path, lambda _i: 5.0).set_index("item_id")
    assert items.loc["n9", "title"] == "second" and items.loc["n7", "title"] == "other, updated"
    # no published_at: published when logged, as serving publishes it (serving.item_sync), so a
    # retrained bundle and the live workers agree on the item and a swap does not re-add it
    assert items.loc["n7", "published_at"] == 300.0
    replayed = replay_items([tmp_path / "w0" / "items.jsonl", tmp_path / "w1" / "items.jsonl"])
    assert [r["title"] for r in replayed] == ["first", "second", "other", "other, updated"]
    assert all("logged_at" not in r for r in replayed)
    assert json.loads((tmp_path / "w1" / "items.jsonl").read_text().splitlines()[0])["logged_at"] == 100.0
    with (tmp_path / "w1" / "items.jsonl").open("a") as f:  # a record without logged_at
        f.write('{"item_id": "old", "title": "no stamp"}\n')
    assert read_item_log(tmp_path, lambda _i: 5.0).set_index("item_id").loc["old", "published_at"] == 5.0
