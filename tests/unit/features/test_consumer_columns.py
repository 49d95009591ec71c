"""The live consumer's columnar path (``read_batches`` -> ``apply_columns``) against the
record-by-record one (``read_parts`` -> ``apply(events)``): the same counts, users and
dedupe on a random stream with retries in two partitions; a corrupt line mid-batch; a
restart from a checkpoint; the merge order and offsets of ``PartitionedLog.read_batches``."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pytest

from feedrank.data.eventlog import EventLog
from feedrank.data.partitions import PartitionCorrupt, PartitionedLog
from feedrank.features.consumer import LogConsumer
from feedrank.features.live_io import StorePublisher, window_fields
from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.store.memory import MemoryStore
from feedrank.types import Event, EventKind

T0 = 1_700_000_000.0


class RecordSource:
    """Only ``read_parts``: forces the consumer's record-by-record path."""

    def __init__(self, log: PartitionedLog) -> None:
        self.log = log

    def read_parts(self, offsets: Mapping[str, tuple[int, int]] | None = None) -> Iterable:
        return self.log.read_parts(offsets)


def random_stream(seed: int, n: int) -> dict[str, list[list[Event]]]:
    """Request-sized batches per partition; ~5% are client retries also written to the
    other partition (same event id), some clicks, dwell events, ts jitter."""
    rng = random.Random(seed)
    parts: dict[str, list[list[Event]]] = {"w0": [], "w1": []}
    t = T0
    for r in range(n):
        t += rng.uniform(0.0, 2.0)
        part = f"w{r % 2}"
        user = f"u{rng.randrange(40)}"
        batch = [Event(f"r{r}:{k}", t + rng.uniform(-1, 1), user, f"i{rng.randrange(300)}", EventKind.IMPRESSION,
                       position=k, request_id=f"r{r}") for k in range(rng.randrange(1, 12))]
        if rng.random() < 0.3:
            batch.append(Event(f"c{r}", t + 1.0, user, batch[0].item_id, EventKind.CLICK))
        if rng.random() < 0.1:
            batch.append(Event(f"d{r}", t + 2.0, user, batch[0].item_id, EventKind.DWELL, dwell_ms=1500.0))
        parts[part].append(batch)
        if rng.random() < 0.05:  # a retry that reached the other worker too
            parts["w1" if part == "w0" else "w0"].append(batch)
    return parts


def write(root: Path, parts: dict[str, list[list[Event]]]) -> None:
    for name, batches in parts.items():
        with EventLog(root / name, segment_bytes=8192) as log:  # several segments
            for k in range(0, len(batches), 10):  # 10 requests per append (an fsync each)
                log.append([e for b in batches[k:k + 10] for e in b])


def publisher() -> StorePublisher:
    rt = RealtimeFeatures(item_category=lambda i: f"c{int(i[1:]) % 4}", max_items=128)  # evictions too
    return StorePublisher(rt, MemoryStore(), history_len=10, clock=lambda: T0 + 10_000)


def state(pub: StorePublisher) -> dict:
    items = [f"i{k}" for k in range(300)]
    imps, clks = pub.rt.counts(items, pub.stream_now)
    store = pub.store.get_items(items, list(window_fields(pub.rt.windows)), now=T0 + 10_000)
    users = {f"u{k}": pub.store.get_user(f"u{k}", now=T0 + 10_000) for k in range(40)}
    stats = pub.rt.stats()
    return {"imps": imps.tolist(), "clks": clks.tolist(), "store": np.nan_to_num(store.values, nan=-1).tolist(),
            "users": users, "stats": stats, "stream_now": pub.stream_now}


@pytest.mark.parametrize("seed", [0, 1])
def test_columnar_path_counts_what_the_record_path_counts(tmp_path: Path, seed: int):
    write(tmp_path / "events", random_stream(seed, 400))
    a, b = publisher(), publisher()
    with PartitionedLog(tmp_path / "events") as log_a, PartitionedLog(tmp_path / "events") as log_b:
        ca = LogConsumer(RecordSource(log_a), a, None, batch_size=64)
        cb = LogConsumer(log_b, b, None, batch_size=64)
        assert not ca.columnar and cb.columnar
        n = ca.poll()
        assert cb.poll() == n > 0
        assert cb.offset == ca.offset
        assert cb.applied == ca.applied < n  # the retries in the other partition were dropped
    sa, sb = state(a), state(b)
    assert sb["stats"]["duplicates"] > 0 and sb["stats"]["evicted_items"] > 0
    assert sa == sb


def test_a_corrupt_line_mid_batch_applies_what_came_before(tmp_path: Path):
    root = tmp_path / "events"
    with EventLog(root / "w0") as w0, EventLog(root / "w1") as w1:
        w0.append([Event(f"a{i}", T0 + i, "u1", "i1", EventKind.IMPRESSION) for i in range(10)])
        w1.append([Event(f"b{i}", T0 + i, "u1", "i2", EventKind.IMPRESSION) for i in range(10)])
    seg = root / "w1" / "seg-000001.jsonl"
    lines = seg.read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b'"u1"', b'"u9"')  # CRC no longer matches: line 7 (offset line 6)
    seg.write_bytes(b"\n".join(lines))
    rt = RealtimeFeatures()
    c = LogConsumer(PartitionedLog(root), rt, tmp_path / "ckpt.npz", batch_size=1024, commit_every_s=0)
    with pytest.raises(PartitionCorrupt) as err:
        c.poll()
    assert err.value.partition == "w1" and err.value.offset == (1, 6)
    assert c.offset == {"w0": (1, 10), "w1": (1, 6)}  # everything before the damage, nothing after
    imps, _ = rt.counts(["i1", "i2"], T0 + 20)
    assert imps[:, 2].tolist() == [10.0, 6.0]
    with pytest.raises(PartitionCorrupt):  # the healthy partition keeps progressing meanwhile
        c.poll()
    assert rt.stats()["applied"] == 16


def test_restart_from_a_checkpoint_counts_nothing_twice(tmp_path: Path):
    root = tmp_path / "events"
    parts = random_stream(3, 300)
    write(root, parts)
    ckpt = tmp_path / "ckpt.npz"
    ref = publisher()
    LogConsumer(PartitionedLog(root), ref, None, batch_size=50).poll()

    first = publisher()
    c = LogConsumer(PartitionedLog(root), first, ckpt, batch_size=50, commit_every_s=1e9)
    assert c.poll(max_events=333) == 333
    c.commit()
    c.poll()  # applied but not committed: lost in a crash
    again = publisher()
    c2 = LogConsumer(PartitionedLog(root), again, ckpt, batch_size=50, commit_every_s=1e9)
    assert c2.resumed and c2.offset == {k: tuple(v) for k, v in c.committed.items()}
    c2.poll()
    assert c2.offset == c.offset
    got, want = state(again), state(ref)
    for key in ("imps", "clks", "stream_now"):
        assert got[key] == want[key]
    assert got["stats"]["applied"] == want["stats"]["applied"]


def test_read_batches_merges_by_time_and_ends_are_exact(tmp_path: Path):
    root = tmp_path / "events"
    with EventLog(root / "w0") as w0, EventLog(root / "w1") as w1:
        w0.append([Event(f"a{i}", T0 + 2 * i, "u", "i", EventKind.IMPRESSION) for i in range(50)])
        w1.append([Event(f"b{i}", T0 + 2 * i + 1, "u", "i", EventKind.IMPRESSION) for i in range(50)])
    with PartitionedLog(root) as log:
        batches = list(log.read_batches(None, batch_size=16))
        ts = np.concatenate([b.events.ts for b in batches])
        assert len(ts) == 100 and [len(b) for b in batches] == [16] * 6 + [4]
        assert (np.diff(ts) > 0).all()  # one global time order
        read = {"w0": 0, "w1": 0}
        for b in batches:  # each batch takes a prefix of each partition: ends are where it resumes
            parts = {"w0" if e[0] == "a" else "w1" for e in b.events.event_id}
            for e in b.events.event_id:
                read["w0" if e[0] == "a" else "w1"] += 1
            assert b.ends == {p: (1, read[p]) for p in parts}
        # resuming from the middle reads exactly the rest, at most ``limit``
        rest = list(log.read_batches({"w0": (1, 40), "w1": (1, 45)}, batch_size=4, limit=12))
        ids = [e for b in rest for e in b.events.event_id]
        assert ids == ["a40", "a41", "a42", "a43", "a44", "a45", "b45", "a46", "b46", "a47", "b47", "a48"]
        assert rest[-1].ends == {"w0": (1, 49), "w1": (1, 48)}
        with pytest.raises(ValueError, match="batch_size"):
            next(log.read_batches(None, batch_size=0))


def test_eventlog_read_batches_equals_read(tmp_path: Path):
    with EventLog(tmp_path / "log", segment_bytes=2048) as log:
        for i in range(60):
            kind = EventKind.CLICK if i % 5 == 0 else EventKind.IMPRESSION
            log.append([Event(f"e{i}", T0 + i, f"u{i % 3}", f"i{i % 7}", kind)])
        recs = list(log.read((1, 3)))
        batches = list(log.read_batches((1, 3), batch_size=7))
        assert [len(b) for b in batches[:-1]] == [7] * (len(batches) - 1)
        cols = [b.events for b in batches]
        assert [e for c in cols for e in c.event_id] == [r.event.event_id for r in recs]
        assert [e for c in cols for e in c.item_id] == [r.event.item_id for r in recs]
        assert np.concatenate([c.ts for c in cols]).tolist() == [r.event.ts for r in recs]
        offs = [(int(s), int(n)) for b in batches for s, n in zip(b.segment, b.line)]
        assert offs == [tuple(r.offset) for r in recs] and len({s for s, _ in offs}) > 1  # across segments
        assert batches[-1].end() == recs[-1].offset.next()
