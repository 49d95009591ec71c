"""The Redis Streams event log: idempotent appends, consumers with their own offsets
that resume, consumer groups with at-least-once delivery made exactly-once by dedupe."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from feedrank.data.eventlog import EventLog
from feedrank.data.streams import RedisEventLog, StreamGroupReader, consume_group, open_event_log
from feedrank.errors import ConfigError
from feedrank.features.consumer import LogConsumer
from feedrank.features.realtime import RealtimeFeatures
from feedrank.types import Event, EventKind

T0 = 1_767_225_600.0


def _ev(i: int, kind: str = "impression", item: str = "n1") -> Event:
    return Event(f"e{i}", T0 + i * 0.01, f"u{i % 3}", item, EventKind(kind), i % 5, f"r{i}", 0.5)


@pytest.fixture()
def stream_log(redis_server: str, tmp_path: Path, request) -> RedisEventLog:
    log = open_event_log(f"{redis_server}/0?prefix={request.node.name}:&stream=ev", tmp_path / "side")
    assert isinstance(log, RedisEventLog)
    yield log
    log.close()


def test_append_is_idempotent_and_read_resumes_from_offsets(stream_log: RedisEventLog):
    res = stream_log.append([_ev(0), _ev(1), _ev(1), _ev(2)])
    assert res.accepted == ["e0", "e1", "e2"] and res.duplicates == ["e1"]
    again = stream_log.append([_ev(2), _ev(3)])               # a retried batch adds only what is new
    assert again.accepted == ["e3"] and again.duplicates == ["e2"]
    assert len(stream_log) == 4 and "e3" in stream_log and "e9" not in stream_log
    recs = list(stream_log.read())
    assert [r.event.event_id for r in recs] == ["e0", "e1", "e2", "e3"]
    assert recs[1].event == _ev(1)
    nxt = (recs[1].offset[0], recs[1].offset[1] + 1)
    assert [r.event.event_id for r in stream_log.read(nxt)] == ["e2", "e3"]
    assert stream_log.end_offset() > recs[-1].offset
    assert list(stream_log.read(stream_log.end_offset())) == []
    # reading in chunks returns the same, in order
    assert [r.offset for r in stream_log.read(None, chunk=1)] == [r.offset for r in recs]
    assert stream_log.writable()


def test_log_consumer_keeps_its_offset_and_resumes(stream_log: RedisEventLog, tmp_path: Path):
    ckpt = tmp_path / "rt.npz"
    stream_log.append([_ev(i) for i in range(50)] + [_ev(100 + i, "click") for i in range(5)])
    c1 = LogConsumer(stream_log, RealtimeFeatures((300,)), ckpt, batch_size=16)
    assert c1.poll() == 55
    c1.commit()
    stream_log.append([_ev(200 + i, "click") for i in range(7)])
    c2 = LogConsumer(stream_log, RealtimeFeatures((300,)), ckpt)   # a restart: resumes at the committed offset
    assert c2.poll() == 7
    imps, clicks = c2.sink.counts(["n1"], T0 + 10)
    assert imps[0, 0] == 62 and clicks[0, 0] == 12                # each event once
    assert c2.poll() == 0


def test_consumer_group_redelivers_unacked_entries_once(stream_log: RedisEventLog):
    stream_log.append([_ev(i, "click") for i in range(20)])
    a = StreamGroupReader(stream_log, "realtime", "worker-a", claim_idle_ms=0)
    got = a.poll()
    assert len(got) == 20 and a.pending() == 20                 # delivered, not acked: then worker-a "crashes"
    sink = RealtimeFeatures((300,))
    sink.apply([ev for _, ev in got[:5]])                       # it had applied 5 of them
    a2 = StreamGroupReader(stream_log, "realtime", "worker-a", claim_idle_ms=0)   # restarted, same name
    assert consume_group(a2, sink) == 20                        # its pending entries come back first
    assert a2.pending() == 0
    stream_log.append([_ev(100 + i, "click") for i in range(3)])
    assert consume_group(a2, sink) == 3 and consume_group(a2, sink) == 0
    _, clicks = sink.counts(["n1"], T0 + 10)
    assert clicks[0, 0] == 23 and sink.stats()["duplicates"] == 5   # at-least-once, counted once


def test_dead_consumer_entries_are_claimed_by_another(stream_log: RedisEventLog):
    stream_log.append([_ev(i) for i in range(10)])
    dead = StreamGroupReader(stream_log, "g", "dead", claim_idle_ms=0)
    assert len(dead.poll()) == 10
    time.sleep(0.05)
    alive = StreamGroupReader(stream_log, "g", "alive", claim_idle_ms=20)
    got = alive.poll()
    assert sorted(ev.event_id for _, ev in got) == sorted(f"e{i}" for i in range(10))
    assert alive.ack([o for o, _ in got]) == 10 and alive.pending() == 0


def test_open_event_log_urls(tmp_path: Path):
    log = open_event_log("", tmp_path / "a")
    assert isinstance(log, EventLog) and log.root == tmp_path / "a"
    log.close()
    log = open_event_log(f"file://{tmp_path / 'b'}", tmp_path / "ignored")
    assert isinstance(log, EventLog) and log.root == tmp_path / "b"
    log.close()
    with pytest.raises(ConfigError, match="unknown scheme"):
        open_event_log("kafka://x", tmp_path)
    with pytest.raises(ConfigError, match="host"):
        open_event_log("redis:///0", tmp_path)
