"""EventLog: durability across SIGKILL, torn-tail repair, corruption detection,
idempotency across reopen, offsets for resuming, and the background impression writer."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from feedrank.data.eventlog import EventLog, LogOffset, encode_line, segment_name
from feedrank.data.impressions import ImpressionWriter
from feedrank.errors import CorruptFile, FeedrankError
from feedrank.types import Event, EventKind

T0 = 1_714_000_000.0


def ev(i: int | str, kind: EventKind = EventKind.CLICK) -> Event:
    return Event(
        event_id=f"e{i}",
        ts=T0 + (i if isinstance(i, int) else 0),
        user_id="u1",
        item_id="n1",
        kind=kind,
        position=0,
        dwell_ms=5.0 if kind is EventKind.DWELL else None,
    )


def ids(log: EventLog) -> list[str]:
    return [r.event.event_id for r in log.read()]


def test_append_read_round_trip_and_duplicates(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        res = log.append([ev(1), ev(2, EventKind.DWELL), ev(1), ev(3)])
        assert res.accepted == ["e1", "e2", "e3"] and res.duplicates == ["e1"]
        res = log.append([ev(3), ev(4)])
        assert res.accepted == ["e4"] and res.duplicates == ["e3"]
        recs = list(log.read())
        assert [r.event for r in recs] == [ev(1), ev(2, EventKind.DWELL), ev(3), ev(4)]
        assert [r.offset for r in recs] == [LogOffset(1, i) for i in range(4)]
        assert len(log) == 4 and "e2" in log and "e9" not in log
        assert log.append([]).accepted == []
    # duplicates are remembered across reopen
    with EventLog(tmp_path) as log:
        res = log.append([ev(2), ev(5)])
        assert res.accepted == ["e5"] and res.duplicates == ["e2"]
        assert ids(log) == ["e1", "e2", "e3", "e4", "e5"]


def test_one_fsync_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fsync
    with EventLog(tmp_path) as log:
        monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
        log.append([ev(i) for i in range(100)])
        assert len(calls) == 1


def test_segments_roll_and_offsets_resume(tmp_path: Path) -> None:
    with EventLog(tmp_path, segment_bytes=600) as log:
        for i in range(30):
            log.append([ev(i)])
        segs = log.segments()
        assert len(segs) > 3 and segs[0].name == segment_name(1)
        recs = list(log.read())
        assert [r.event.event_id for r in recs] == [f"e{i}" for i in range(30)]
        assert recs == sorted(recs, key=lambda r: r.offset)
        # resume after record 12, and from an offset in the middle of a segment
        resumed = list(log.read(from_offset=recs[12].offset.next()))
        assert [r.event.event_id for r in resumed] == [f"e{i}" for i in range(13, 30)]
        assert list(log.iter_events(recs[-1].offset.next())) == []
        assert log.end_offset() == recs[-1].offset.next()
    with EventLog(tmp_path, segment_bytes=600) as log:
        assert len(log) == 30
        log.append([ev(30)])
        assert ids(log)[-1] == "e30"


def test_torn_tail_is_truncated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with EventLog(tmp_path) as log:
        log.append([ev(1), ev(2)])
        seg = log.segments()[-1]
    good_size = seg.stat().st_size
    with open(seg, "ab") as f:  # a crash mid-write: half a line, no newline
        f.write(encode_line(ev(3))[:25])
    with caplog.at_level("WARNING"):
        log = EventLog(tmp_path)
    assert "torn tail" in caplog.text
    assert seg.stat().st_size == good_size and log.repaired_bytes == 25
    assert ids(log) == ["e1", "e2"]
    assert log.append([ev(3)]).accepted == ["e3"]  # the torn one was never acked
    log.close()
    with EventLog(tmp_path) as log:
        assert ids(log) == ["e1", "e2", "e3"]


def test_torn_tail_with_bad_crc_and_newline(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append([ev(1)])
        seg = log.segments()[-1]
    line = bytearray(encode_line(ev(2)))
    line[40] ^= 0x01  # flipped bit in the last line: not acked, treat as torn
    with open(seg, "ab") as f:
        f.write(bytes(line) + b"\0\0\0\0")
    with EventLog(tmp_path) as log:
        assert ids(log) == ["e1"]


def test_corrupt_line_in_the_middle_raises(tmp_path: Path, corrupt_line) -> None:
    with EventLog(tmp_path) as log:
        log.append([ev(1), ev(2), ev(3)])
        seg = log.segments()[-1]
    corrupt_line(seg, 1)  # line 2 (1-based), lines 1 and 3 intact
    with pytest.raises(CorruptFile, match=r"seg-000001\.jsonl: line 2"):
        EventLog(tmp_path)
    # the failed open released the directory lock
    (tmp_path / "seg-000001.jsonl").rename(tmp_path / "aside.bad")
    EventLog(tmp_path).close()


def test_one_writer_per_directory_and_readonly_readers(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append([ev(1)])
        with pytest.raises(FeedrankError, match="another EventLog"):
            EventLog(tmp_path)
        reader = EventLog(tmp_path, readonly=True)
        assert ids(reader) == ["e1"]
        log.append([ev(2)])
        assert ids(reader) == ["e1", "e2"]  # readers see later commits
        with pytest.raises(FeedrankError, match="read-only"):
            reader.append([ev(3)])
        assert log.writable() and not reader.writable()
    assert not log.writable()
    with pytest.raises(FeedrankError, match="closed"):
        log.append([ev(3)])


def test_concurrent_appends_are_serialized(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        def worker(t: int) -> None:
            for b in range(20):
                log.append([ev(f"{t}-{b}-{j}") for j in range(5)] + [ev("shared")])

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        got = ids(log)
        assert len(got) == len(set(got)) == 4 * 20 * 5 + 1


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from feedrank.data.eventlog import EventLog
    from feedrank.types import Event, EventKind
    log = EventLog(Path(sys.argv[1]), segment_bytes=20_000)
    b = 0
    while True:
        batch = [Event(f"b{b}-{j}", 1714000000.0, "u", "n", EventKind.CLICK, position=j) for j in range(50)]
        res = log.append(batch)
        sys.stdout.write(" ".join(res.accepted) + "\\n")
        sys.stdout.flush()
        b += 1
    """
)


def test_acked_events_survive_sigkill(tmp_path: Path) -> None:
    root = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, text=True)
    acked: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while len(acked) < 3000 and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            acked.extend(line.split())
        time.sleep(random.uniform(0, 0.02))  # let it run on: the kill lands anywhere
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-append, most likely
        proc.wait(10)
    assert len(acked) >= 500, "child did not make progress"
    with EventLog(root, segment_bytes=20_000) as log:
        stored = ids(log)
        assert set(acked) <= set(stored)
        assert len(stored) == len(set(stored))
        # appending the acked events again writes nothing
        again = log.append([Event(e, T0, "u", "n", EventKind.CLICK) for e in acked[:200]])
        assert again.accepted == [] and len(again.duplicates) == 200


def test_impression_writer_batches_and_flushes(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        w = ImpressionWriter(log)
        for r in range(50):
            assert w.submit([ev(f"r{r}:{k}", EventKind.IMPRESSION) for k in range(1, 6)])
        assert w.submit([ev("r0:1", EventKind.IMPRESSION)])  # duplicate, counted
        assert w.flush(5.0)
        s = w.stats()
        assert s["written"] == 250 and s["duplicates"] == 1 and s["pending"] == 0
        assert s["batches"] <= 51
        assert len(log) == 250
        assert w.close()
        assert not w.submit([ev("late", EventKind.IMPRESSION)])
        assert w.stats()["dropped"] == 1


def test_impression_writer_never_blocks_when_full(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        gate = threading.Event()
        real_append = log.append

        def slow_append(events):
            gate.wait(5)
            return real_append(events)

        log.append = slow_append  # type: ignore[method-assign]
        w = ImpressionWriter(log, max_pending=10)
        t0 = time.perf_counter()
        results = [w.submit([ev(f"x{i}", EventKind.IMPRESSION)]) for i in range(30)]
        assert time.perf_counter() - t0 < 0.5
        assert not all(results) and w.stats()["dropped"] > 0
        gate.set()
        assert w.close()
        assert w.stats()["written"] == sum(results)
