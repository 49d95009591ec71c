"""ImpressionWriter's linger (``serving.impression_linger_ms``): submits within the linger
share one append (one fsync); ``flush`` and ``close`` cut the wait short, so a clean
shutdown writes everything submitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedrank.data.eventlog import EventLog
from feedrank.data.impressions import ImpressionWriter
from feedrank.types import Event, EventKind

T0 = 1_714_000_000.0


def imps(r: int, n: int = 20) -> list[Event]:
    return [Event(f"r{r}:{k}", T0 + r, "u1", f"n{k}", EventKind.IMPRESSION, position=k) for k in range(n)]


def test_submits_within_the_linger_share_one_append_and_flush_does_not_wait_it_out(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        appends: list[int] = []
        real = log.append

        def spy(events):
            events = list(events)
            appends.append(len(events))
            return real(events)

        log.append = spy  # type: ignore[method-assign]
        w = ImpressionWriter(log, linger_s=3600.0)  # an hour: only flush can end the wait
        for r in range(30):
            assert w.submit(imps(r))
        assert w.flush(30.0)  # returns long before the linger would end
        assert appends == [600]
        assert w.stats()["written"] == 600 and len(log) == 600
        assert w.submit(imps(99))
        assert w.close(30.0)  # a clean shutdown writes what was submitted, without lingering
        assert len(log) == 620 and appends == [600, 20]


def test_a_full_batch_is_written_without_waiting_for_the_linger(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        w = ImpressionWriter(log, linger_s=3600.0, max_batch=100)
        for r in range(10):
            w.submit(imps(r))  # 200 events: two full batches
        deadline_ok = w.flush(30.0)
        assert deadline_ok and len(log) == 200
        assert w.close(30.0)


def test_negative_linger_is_rejected(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log, pytest.raises(ValueError, match="linger_s"):
        ImpressionWriter(log, linger_s=-1.0)
