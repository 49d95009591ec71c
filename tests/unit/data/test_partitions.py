"""Reading every worker partition of an events folder: interleaved concurrent writers,
per-partition offsets, a partition appearing later, a corrupt record in one partition,
and the read-only reader's incremental refresh."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from feedrank.data.eventlog import EventLog, read_partitions
from feedrank.data.partitions import PartitionCorrupt, PartitionedLog, partition_roots
from feedrank.types import Event, EventKind

T0 = 1_714_000_000.0


def ev(eid: str, ts: float, kind: EventKind = EventKind.IMPRESSION, item: str = "n1") -> Event:
    return Event(event_id=eid, ts=ts, user_id="u1", item_id=item, kind=kind, position=0)


def write_concurrently(root: Path, n: int = 200, segment_bytes: int = 4096) -> dict[str, list[str]]:
    """Two writers (w0, w1) appending at once, timestamps interleaved (even: w0, odd: w1)."""
    written: dict[str, list[str]] = {"w0": [], "w1": []}

    def writer(part: str, parity: int) -> None:
        with EventLog(root / part, segment_bytes=segment_bytes) as log:
            for i in range(parity, n, 2):
                e = ev(f"{part}-{i}", T0 + i)
                log.append([e])
                written[part].append(e.event_id)

    threads = [threading.Thread(target=writer, args=("w0", 0)), threading.Thread(target=writer, args=("w1", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return written


def test_concurrent_partitions_read_once_in_time_order(tmp_path: Path):
    written = write_concurrently(tmp_path)
    assert [p.name for p in partition_roots(tmp_path)] == ["w0", "w1"]
    with PartitionedLog(tmp_path) as log:
        recs = list(log.read_parts())
    assert sorted(r.event.event_id for r in recs) == sorted(written["w0"] + written["w1"])
    ts = [r.event.ts for r in recs]
    assert ts == sorted(ts)  # interleaved by event time across partitions
    for part in ("w0", "w1"):  # each partition in its own log order, offsets increasing
        offs = [r.offset for r in recs if r.partition == part]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)
        assert offs[0] == (1, 0) and max(o.segment for o in offs) > 1  # several segments


def test_offsets_resume_and_a_new_partition_is_picked_up(tmp_path: Path):
    write_concurrently(tmp_path, n=40)
    offsets: dict[str, tuple[int, int]] = {}
    with PartitionedLog(tmp_path) as log:
        first = list(log.read_parts(offsets))
        for r in first:
            offsets[r.partition] = r.offset.next()
        assert len(first) == 40 and list(log.read_parts(offsets)) == []
        with EventLog(tmp_path / "w0") as w0, EventLog(tmp_path / "w2") as w2:  # a worker added later
            w0.append([ev("late-0", T0 + 100)])
            w2.append([ev("new-0", T0 + 50), ev("new-1", T0 + 150)])
        again = list(log.read_parts(offsets))
    assert [(r.partition, r.event.event_id) for r in again] == [("w2", "new-0"), ("w0", "late-0"), ("w2", "new-1")]


def test_a_retry_in_two_partitions_is_read_once(tmp_path: Path):
    with EventLog(tmp_path / "w0") as w0, EventLog(tmp_path / "w1") as w1:
        w0.append([ev("a", T0), ev("retry", T0 + 1, EventKind.CLICK)])
        w1.append([ev("retry", T0 + 1, EventKind.CLICK), ev("b", T0 + 2)])
    assert sorted(e.event_id for e in read_partitions(tmp_path)) == ["a", "b", "retry"]
    with PartitionedLog(tmp_path) as log:
        assert sorted(e.event_id for e in log.read_all()) == ["a", "b", "retry"]
        assert len(list(log.read_parts())) == 4  # a consumer sees both copies; its sink dedupes


def test_a_corrupt_record_names_partition_and_offset_and_the_rest_is_read(tmp_path: Path, corrupt_line):
    with EventLog(tmp_path / "w0") as w0, EventLog(tmp_path / "w1") as w1:
        w0.append([ev(f"a{i}", T0 + i) for i in range(5)])
        w1.append([ev(f"b{i}", T0 + i) for i in range(5)])
    corrupt_line(tmp_path / "w1" / "seg-000001.jsonl", 2)
    got: list[str] = []
    with PartitionedLog(tmp_path) as log:
        with pytest.raises(PartitionCorrupt) as err:
            for r in log.read_parts():
                got.append(r.event.event_id)
    assert sorted(got) == ["a0", "a1", "a2", "a3", "a4", "b0", "b1"]  # nothing lost before the damage
    assert err.value.partition == "w1" and err.value.offset == (1, 2)
    msg = str(err.value)
    assert "'w1'" in msg and "segment 1, line 2" in msg and "seg-000001.jsonl: line 3 is corrupt" in msg


def test_readonly_reader_refreshes_incrementally(tmp_path: Path):
    with EventLog(tmp_path, segment_bytes=2048) as writer:
        writer.append([ev(f"e{i}", T0 + i) for i in range(5)])
        reader = EventLog(tmp_path, readonly=True)
        assert [r.event.event_id for r in reader.read()] == [f"e{i}" for i in range(5)]
        for i in range(5, 60):  # rolls over several segments
            writer.append([ev(f"e{i}", T0 + i)])
        assert len(writer.segments()) > 2
        recs = list(reader.read())
        assert [r.event.event_id for r in recs] == [f"e{i}" for i in range(60)]
        assert [r.offset for r in recs] == [r.offset for r in writer.read()]
        assert len(reader) == 60 and "e59" in reader
        reader.close()


def test_open_readers_checks_the_other_partitions_up_front(tmp_path: Path):
    """A serving worker opens its readers while it starts (features/live.py), so that its
    consumer's first poll does not CRC-check every segment of the other partitions; its own
    partition is read through its writer, never opened as a reader."""
    write_concurrently(tmp_path, n=40)
    with EventLog(tmp_path / "w0") as own:
        log = PartitionedLog(tmp_path, own={"w0": own})
        assert log.open_readers() == 1 and set(log._readers) == {"w1"}
        reader = log._readers["w1"]
        assert log.open_readers() == 1 and log._readers["w1"] is reader  # idempotent: the same reader
        recs = list(log.read_parts())
        assert log._readers["w1"] is reader  # the read used it
        assert sorted(r.event.event_id for r in recs) == sorted([f"w0-{i}" for i in range(0, 40, 2)] +
                                                                [f"w1-{i}" for i in range(1, 40, 2)])
        log.close()
