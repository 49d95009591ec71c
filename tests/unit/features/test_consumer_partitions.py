"""The real-time counters' consumer over every worker partition: each event applied
exactly once across a crash, a partition added later, a retry written to two
partitions, a corrupt record in one partition, and a checkpoint from before partitions."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from feedrank.data.eventlog import EventLog
from feedrank.data.partitions import PartitionCorrupt, PartitionedLog
from feedrank.features.consumer import LogConsumer
from feedrank.features.realtime import RealtimeFeatures
from feedrank.types import Event, EventKind

T0 = 1_700_000_000.0
ITEMS = [f"i{k}" for k in range(5)]


def ev(eid: str, ts: float, item: str, kind: str = "impression") -> Event:
    return Event(event_id=eid, ts=ts, user_id="u1", item_id=item, kind=EventKind(kind))


def impressions(rt: RealtimeFeatures) -> int:
    return int(rt.counts(ITEMS, T0 + 10_000)[0][:, 2].sum())


def write_two_partitions(root: Path, n: int) -> None:
    """w0 and w1 written at the same time, timestamps interleaved."""
    def writer(part: str, parity: int) -> None:
        with EventLog(root / part, segment_bytes=4096) as log:
            for i in range(parity, n, 2):
                log.append([ev(f"{part}-{i}", T0 + i, ITEMS[i % 5])])

    threads = [threading.Thread(target=writer, args=(p, k)) for k, p in enumerate(("w0", "w1"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_consumer_reads_every_partition_once_across_a_crash(tmp_path: Path):
    events = tmp_path / "events"
    write_two_partitions(events, 300)
    ckpt = tmp_path / "ckpt.npz"
    rt = RealtimeFeatures()
    c = LogConsumer(PartitionedLog(events), rt, ckpt, batch_size=32, commit_every_s=1e9)
    assert c.poll(max_events=110) == 110
    c.commit()
    committed = c.committed
    assert set(committed) == {"w0", "w1"}
    assert c.poll() == 190                                  # applied, never committed: lost in the crash
    assert impressions(rt) == 300
    del c, rt
    with EventLog(events / "w1") as w1, EventLog(events / "w2") as w2:   # more traffic; a worker added
        w1.append([ev("late", T0 + 400, "i0")])
        w2.append([ev("w2-0", T0 + 390, "i1"), ev("w2-1", T0 + 410, "i2")])
    rt2 = RealtimeFeatures()
    c2 = LogConsumer(PartitionedLog(events), rt2, ckpt)
    assert c2.offset == committed and c2.resumed and c2.applied == 0
    assert c2.poll() == 190 + 3                             # from each partition's committed offset
    assert impressions(rt2) == 303 and rt2.stats()["duplicates"] == 0
    c2.stop()
    c3 = LogConsumer(PartitionedLog(events), RealtimeFeatures(), ckpt)
    assert c3.offset == c2.offset and set(c3.offset) == {"w0", "w1", "w2"}
    assert c3.offset_json() == {p: list(o) for p, o in sorted(c2.offset.items())}


def test_a_retry_in_two_partitions_counts_once_even_after_a_restart(tmp_path: Path):
    events = tmp_path / "events"
    with EventLog(events / "w0") as w0:
        w0.append([ev("a", T0, "i0"), ev("retry", T0 + 1, "i1")])
    ckpt = tmp_path / "ckpt.npz"
    c = LogConsumer(PartitionedLog(events), RealtimeFeatures(), ckpt)
    c.poll()
    c.stop()  # commits
    with EventLog(events / "w1") as w1:  # the client's retry reached the other worker
        w1.append([ev("retry", T0 + 1, "i1"), ev("b", T0 + 2, "i2")])
    rt = RealtimeFeatures()
    c2 = LogConsumer(PartitionedLog(events), rt, ckpt)
    assert c2.poll() == 2
    assert impressions(rt) == 3 and rt.stats()["duplicates"] == 1


def test_a_corrupt_partition_does_not_hold_back_the_others(tmp_path: Path, corrupt_line):
    events = tmp_path / "events"
    with EventLog(events / "w0") as w0, EventLog(events / "w1") as w1:
        w0.append([ev(f"a{i}", T0 + i, "i0") for i in range(6)])
        w1.append([ev(f"b{i}", T0 + i, "i1") for i in range(6)])
    corrupt_line(events / "w0" / "seg-000001.jsonl", 3)
    rt = RealtimeFeatures()
    c = LogConsumer(PartitionedLog(events), rt, tmp_path / "ckpt.npz", batch_size=4)
    with pytest.raises(PartitionCorrupt, match=r"partition 'w0'.*segment 1, line 3"):
        c.poll()
    assert c.offset == {"w0": (1, 3), "w1": (1, 6)}          # everything before the damage applied
    assert impressions(rt) == 9
    with EventLog(events / "w1") as w1:
        w1.append([ev("b6", T0 + 6, "i1")])
    with pytest.raises(PartitionCorrupt):                     # still reported, and w1 still progresses
        c.poll()
    assert c.offset["w1"] == (1, 7) and impressions(rt) == 10


def test_a_single_log_checkpoint_resumes_the_workers_own_partition(tmp_path: Path):
    events = tmp_path / "events"
    with EventLog(events / "w1") as own, EventLog(events / "w0") as other:
        own.append([ev(f"o{i}", T0 + i, "i0") for i in range(4)])
        other.append([ev(f"x{i}", T0 + i, "i1") for i in range(3)])
        ckpt = tmp_path / "ckpt.npz"
        old = LogConsumer(own, RealtimeFeatures(), ckpt)       # before partitions: its own log only
        assert old.poll() == 4
        old.stop()
        assert np.load(ckpt)["offset"].tolist() == [1, 4]
        rt = RealtimeFeatures()
        c = LogConsumer(PartitionedLog(events, own={"w1": own}), rt, ckpt)
        assert c.offset == {"w1": (1, 4)}
        assert c.poll() == 3                                   # the other worker's events, from its start
        assert int(rt.counts(["i0", "i1"], T0 + 100)[0][:, 2].sum()) == 7
        c.stop()
        with pytest.raises(ValueError, match="per-partition offsets"):
            LogConsumer(own, RealtimeFeatures(), ckpt)
