"""serving/item_sync.py: each worker tails every partition's items.jsonl incrementally and
indexes what another worker accepted (newest ``logged_at`` per id wins), so an item posted
to one worker is retrievable on all of them."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from feedrank.serving.item_sync import ItemLog, ItemSync, replay_items


class FakeService:
    """Records every add_items batch; ``items`` is what it would serve (last write wins)."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.items: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def add_items(self, records: list[dict[str, Any]], now: float | None = None) -> dict:
        with self.lock:
            self.batches.append([dict(r) for r in records])
            created = sum(r["item_id"] not in self.items for r in records)
            for r in records:
                self.items[r["item_id"]] = dict(r)
        return {"created": created, "updated": len(records) - created}

    def added(self) -> list[str]:
        return [r["item_id"] for b in self.batches for r in b]


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def _paths(root: Path, own: str, parts: list[str]) -> list[Path]:
    return [root / own / "items.jsonl"] + [root / p / "items.jsonl" for p in parts if p != own]


def _sync(root: Path, svc: FakeService, own: str = "w0", parts: list[str] | None = None) -> ItemSync:
    box = parts if parts is not None else ["w0", "w1"]
    return ItemSync(svc, lambda: _paths(root, own, box), own)


def test_poll_reads_only_new_records_and_skips_own_accepted(tmp_path: Path):
    clock = Clock()
    other = ItemLog(tmp_path / "w1" / "items.jsonl", clock)
    other.append([{"item_id": "a", "title": "A"}])
    svc = FakeService()
    sync = _sync(tmp_path, svc)
    sync.own.clock = clock
    assert sync.replay() == 1 and svc.added() == ["a"]
    assert sync.poll() == 0  # nothing new: offsets remembered, nothing applied twice
    sync.accept([{"item_id": "b", "title": "B"}])  # this worker's POST: indexed once, here
    other.append([{"item_id": "c", "title": "C", "published_at": 5.0}])
    assert sync.poll() == 1
    assert svc.added() == ["a", "b", "c"]
    # a record without published_at is published at its logged_at, on every worker alike
    assert svc.items["a"]["published_at"] == 1001.0 and svc.items["c"]["published_at"] == 5.0
    assert svc.items["b"]["published_at"] == 1002.0


def test_partial_last_line_waits_for_its_newline(tmp_path: Path):
    path = tmp_path / "w1" / "items.jsonl"
    path.parent.mkdir(parents=True)
    line = orjson.dumps({"item_id": "p", "title": "partial", "logged_at": 7.0}) + b"\n"
    path.write_bytes(line[:10])
    svc = FakeService()
    sync = _sync(tmp_path, svc)
    assert sync.poll() == 0 and svc.added() == []
    with open(path, "ab") as f:
        f.write(line[10:])
    assert sync.poll() == 1 and svc.items["p"]["title"] == "partial"


def test_partition_appearing_later_is_read_from_its_start(tmp_path: Path):
    parts = ["w0"]
    svc = FakeService()
    sync = _sync(tmp_path, svc, parts=parts)
    assert sync.replay() == 0
    ItemLog(tmp_path / "w2" / "items.jsonl", Clock()).append([{"item_id": "x"}, {"item_id": "y"}])
    parts.append("w2")  # a worker added (app.item_log_paths globs w* on every poll)
    assert sync.poll() == 2 and sorted(svc.added()) == ["x", "y"]


def test_corrupt_line_is_logged_with_file_and_offset_others_kept(tmp_path: Path, caplog):
    path = tmp_path / "w1" / "items.jsonl"
    path.parent.mkdir(parents=True)
    good1 = orjson.dumps({"item_id": "g1", "logged_at": 1.0}) + b"\n"
    bad = b'{"item_id": "broken", "logg\n'
    good2 = orjson.dumps({"item_id": "g2", "logged_at": 2.0}) + b"\n"
    path.write_bytes(good1 + bad + good2)
    svc = FakeService()
    with caplog.at_level(logging.ERROR, logger="feedrank.serving"):
        assert _sync(tmp_path, svc).poll() == 2
    assert svc.added() == ["g1", "g2"]
    msg = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert str(path) in msg and f"byte offset {len(good1)}" in msg


def test_newest_logged_at_wins_across_partitions_and_polls(tmp_path: Path):
    w0 = ItemLog(tmp_path / "w0" / "items.jsonl", lambda: 10.0)
    w1 = ItemLog(tmp_path / "w1" / "items.jsonl", lambda: 20.0)
    w1.append([{"item_id": "n", "title": "newer"}])
    w0.append([{"item_id": "n", "title": "older"}])
    svc = FakeService()
    sync = ItemSync(svc, lambda: _paths(tmp_path, "w2", ["w0", "w1"]), "w2")
    assert sync.replay() == 1  # one read holding both: only the newest is indexed
    assert svc.batches == [[{"item_id": "n", "title": "newer", "published_at": 20.0}]]
    # a slow write from another worker, older than what is indexed: skipped
    ItemLog(tmp_path / "w0" / "items.jsonl", lambda: 15.0).append([{"item_id": "n", "title": "late but old"}])
    assert sync.poll() == 0 and svc.items["n"]["title"] == "newer"
    ItemLog(tmp_path / "w0" / "items.jsonl", lambda: 30.0).append([{"item_id": "n", "title": "newest"}])
    assert sync.poll() == 1 and svc.items["n"]["title"] == "newest"
    # the start-up ordering helper agrees: oldest first, the newest of an id last
    assert [r["title"] for r in replay_items(_paths(tmp_path, "w0", ["w1"]))] == ["older", "late but old", "newer", "newest"]


def test_torn_tail_is_closed_before_the_next_append(tmp_path: Path):
    path = tmp_path / "w0" / "items.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"item_id": "torn", "ti')  # a crash mid-write
    ItemLog(path, lambda: 3.0).append([{"item_id": "after"}])
    chunk = ItemLog(path).read_from(0)
    assert [s.record["item_id"] for s in chunk.items] == ["after"] and chunk.corrupt == [0]
    assert chunk.end == path.stat().st_size


def test_shrunk_log_is_reread_and_already_indexed_records_not_reapplied(tmp_path: Path, caplog):
    path = tmp_path / "w1" / "items.jsonl"
    ItemLog(path, lambda: 5.0).append([{"item_id": "k1"}, {"item_id": "k2"}])
    svc = FakeService()
    sync = _sync(tmp_path, svc)
    assert sync.poll() == 2
    path.write_bytes(orjson.dumps({"item_id": "k3", "logged_at": 6.0}) + b"\n")  # replaced by a shorter file
    with caplog.at_level(logging.WARNING, logger="feedrank.serving"):
        assert sync.poll() == 1
    assert svc.added() == ["k1", "k2", "k3"] and "shrank" in caplog.text


def test_a_refused_record_is_logged_and_does_not_keep_the_others_out(tmp_path: Path, caplog):
    class Picky(FakeService):
        fail_once = False

        def add_items(self, records, now=None):
            if self.fail_once:
                self.fail_once = False
                raise RuntimeError("encoder down")
            if any(r["item_id"] == "bad" for r in records):
                raise ValueError("unknown category")
            return super().add_items(records, now)

    svc = Picky()
    sync = _sync(tmp_path, svc)
    ItemLog(tmp_path / "w1" / "items.jsonl", lambda: 1.0).append([{"item_id": "f1"}, {"item_id": "bad"}, {"item_id": "f2"}])
    with caplog.at_level(logging.ERROR, logger="feedrank.serving"):
        assert sync.poll() == 2
    assert svc.added() == ["f1", "f2"]
    assert "could not index item 'bad'" in caplog.text and "unknown category" in caplog.text
    ItemLog(tmp_path / "w1" / "items.jsonl", lambda: 2.0).append([{"item_id": "f3"}])
    assert sync.poll() == 1 and svc.added() == ["f1", "f2", "f3"]  # tailing goes on
    # a POST whose indexing failed after the write: logged, so the next poll indexes it
    svc.fail_once = True
    with pytest.raises(RuntimeError):
        sync.accept([{"item_id": "posted"}])
    assert sync.poll() == 1 and svc.added()[-1] == "posted"


def test_background_thread_indexes_within_the_interval_and_stops(tmp_path: Path):
    svc = FakeService()
    sync = _sync(tmp_path, svc).start(0.05)
    try:
        ItemLog(tmp_path / "w1" / "items.jsonl").append([{"item_id": "bg"}])
        deadline = time.monotonic() + 10
        while "bg" not in svc.items and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "bg" in svc.items
    finally:
        sync.stop()
    assert not any(t.name == "item-sync" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ValueError, match="interval"):
        _sync(tmp_path, svc).start(0)


def test_service_without_add_items_is_left_alone(tmp_path: Path):
    ItemLog(tmp_path / "w1" / "items.jsonl").append([{"item_id": "z"}])
    sync = _sync(tmp_path, object())  # type: ignore[arg-type]
    assert not sync.accepts_items and sync.poll() == 0
    with pytest.raises(TypeError, match="does not accept item adds"):
        sync.accept([{"item_id": "z"}])


def test_own_accepted_records_are_not_read_back_by_the_tailer(tmp_path: Path, monkeypatch):
    svc = FakeService()
    sync = _sync(tmp_path, svc)
    sync.replay()
    sync.accept([{"item_id": "b", "title": "B"}])
    sync.accept([{"item_id": "d", "title": "D"}])
    own = tmp_path / "w0" / "items.jsonl"
    assert sync._offsets[own] == own.stat().st_size  # indexed at accept: the offset moved past it
    reads: list[tuple[Path, int]] = []
    real = ItemLog.read_from

    def spy(self, offset=0):
        reads.append((self.path, offset))
        return real(self, offset)

    monkeypatch.setattr(ItemLog, "read_from", spy)
    assert sync.poll() == 0
    assert reads and all(off == own.stat().st_size for p, off in reads if p == own)  # nothing of it re-read
    assert svc.added() == ["b", "d"]
