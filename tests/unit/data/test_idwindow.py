"""The bounded event-id memory of log writers (data/idwindow.py), and that an EventLog's
memory of ids stays bounded: a writer keeps a window, a reader keeps none."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from feedrank.data.eventlog import EventLog
from feedrank.data.idwindow import IdWindow
from feedrank.types import Event, EventKind

T0 = 1_714_000_000.0


def ev(i: int, kind: EventKind = EventKind.IMPRESSION) -> Event:
    return Event(event_id=f"e{i}", ts=T0 + i, user_id="u1", item_id="n1", kind=kind, position=0)


def test_window_matches_a_reference_of_the_newest_additions() -> None:
    rng = random.Random(0)
    cap = 7
    w = IdWindow(cap)
    history: list[tuple[str, str]] = []  # ("add" | "forget", id)
    for step in range(600):
        e = f"x{rng.randrange(20)}"
        if rng.random() < 0.15:
            w.difference_update([e])
            history.append(("forget", e))
        elif rng.random() < 0.5:
            w.add(e)
            history.append(("add", e))
        else:
            batch = [f"x{rng.randrange(20)}" for _ in range(rng.randrange(1, 4))]
            w.update(batch)
            history.extend(("add", b) for b in batch)
        # reference: an id is in when one of the newest cap additions is its, with no forget after it
        adds = [i for i, (op, _) in enumerate(history) if op == "add"]
        recent = set(adds[-cap:])
        expect = set()
        for e2 in {x for _, x in history}:
            last_add = max((i for i, (op, x) in enumerate(history) if op == "add" and x == e2), default=-1)
            forgot = any(op == "forget" and x == e2 for op, x in history[last_add + 1:])
            if last_add in recent and not forgot:
                expect.add(e2)
        got = {x for _, x in history if x in w}
        assert got == expect, step
        assert len(w) == len(expect)


def test_window_rejects_a_bad_cap() -> None:
    with pytest.raises(ValueError, match="cap must be >= 1"):
        IdWindow(0)


def test_writer_dedupes_within_its_window_and_stays_bounded(tmp_path: Path) -> None:
    with EventLog(tmp_path, id_window=5) as log:
        assert log.append([ev(i) for i in range(12)]).accepted == [f"e{i}" for i in range(12)]
        assert len(log._ids) == 5  # the newest five, not all twelve
        res = log.append([ev(11), ev(7), ev(3)])
        assert res.duplicates == ["e11", "e7"] and res.accepted == ["e3"]  # e3 left the window
    # reopened: the window is rebuilt from the newest lines of the log
    with EventLog(tmp_path, id_window=5) as log:
        assert len(log._ids) == 5
        assert log.append([ev(3), ev(0)]).accepted == ["e0"]  # e3 was written last: still in
        assert len(log) == 14


def test_reader_keeps_no_ids_but_answers_membership(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append([ev(i) for i in range(50)])
        reader = EventLog(tmp_path, readonly=True)
        assert [r.event.event_id for r in reader.read()] == [f"e{i}" for i in range(50)]
        log.append([ev(50)])
        assert len(list(reader.read())) == 51
        assert len(reader._ids) == 0  # a consumer's reader would otherwise hold every id it ever read
        assert "e50" in reader and "e0" in reader and "e99" not in reader
        reader.close()


def test_impressions_never_push_a_client_event_out_of_its_window(tmp_path: Path) -> None:
    with EventLog(tmp_path, id_window=4) as log:
        log.append([ev(0, EventKind.CLICK), ev(1, EventKind.DWELL)])
        log.append([ev(i) for i in range(100, 130)])  # a flood of server impressions
        res = log.append([ev(0, EventKind.CLICK), ev(1, EventKind.DWELL), ev(129), ev(100)])
        assert res.duplicates == ["e0", "e1", "e129"] and res.accepted == ["e100"]  # e100 left the impression window
    with EventLog(tmp_path, id_window=4) as log:  # reopened: each line back in its own window
        assert log.append([ev(0, EventKind.CLICK), ev(100)]).duplicates == ["e0", "e100"]
        assert len(log._ids.events) == 2 and len(log._ids.impressions) == 4
