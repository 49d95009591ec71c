"""The feedback path end to end: concurrent durable ingest (group commit), SIGKILLs during
ingest, the log -> counters consumer with resume, and the offline export + PIT build."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from feedrank.bench.ingest import bench_counter_lag, bench_crash, bench_embedded
from feedrank.config import FeaturesConfig
from feedrank.data.eventlog import EventLog
from feedrank.features.consumer import LogConsumer
from feedrank.features.offline import FeatureTable, LogExporter, build_training_set, daily_item_aggregates
from feedrank.features.realtime import build_realtime
from feedrank.features.store import open_store
from feedrank.types import Event, EventKind

T0 = 1_763_683_200.0


def _ev(i: int, kind: str = "impression", item: str | None = None, rid: str | None = None) -> Event:
    return Event(f"e{i}", T0 + i, f"u{i % 5}", item or f"i{i % 11}", EventKind(kind), request_id=rid or f"r{i}")


def test_concurrent_appends_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    real = os.fsync
    log = EventLog(tmp_path / "log")
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    barrier = threading.Barrier(8)

    def writer(t: int) -> None:
        barrier.wait()
        for b in range(10):
            log.append([_ev(t * 1000 + b * 10 + j) for j in range(10)])

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(log) == 800 and len({r.event.event_id for r in log.read()}) == 800
    assert len(calls) <= 80  # never more than one per batch; fewer when writers overlap
    log.close()


def test_failed_fsync_fails_the_batch_and_forgets_its_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    log = EventLog(tmp_path / "log")
    log.append([_ev(1)])

    def broken(fd: int) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        log.append([_ev(2), _ev(3)])
    monkeypatch.undo()
    assert len(log) == 1 and "e2" not in log
    assert log.append([_ev(2), _ev(3)]).accepted == ["e2", "e3"]  # a retry writes them
    log.close()
    with EventLog(tmp_path / "log", readonly=True) as ro:
        assert [r.event.event_id for r in ro.read()] == ["e1", "e2", "e3"]


def test_sigkill_during_ingest_loses_no_acknowledged_event(tmp_path: Path):
    out = bench_crash(tmp_path, kills=6, seconds=30, batch=20, say=lambda _m: None)
    assert out["kills"] >= 3 and out["acknowledged"] > 0
    assert out["acknowledged_lost"] == 0 and out["duplicates"] == 0


def test_bench_parts_run_small(tmp_path: Path):
    emb = bench_embedded(tmp_path, events=2000, batch=100, writers=2, repeats=1)
    assert emb["events_per_s"]["best"] > 0
    lag = bench_counter_lag(tmp_path, rate=2000, seconds=1.0)
    assert lag["visible"] == lag["events"] == lag["counted_in_24h_window"]
    assert lag["lag_s"]["p99"] < 5.0


def test_log_to_counters_store_and_training_set(tmp_path: Path):
    cfg = FeaturesConfig(windows_s=(300, 3600, 86400), stall_s=3600)
    log = EventLog(tmp_path / "log", segment_bytes=8192)
    log.append([_ev(i) for i in range(200)] + [_ev(1000 + i, "click", item=f"i{i % 11}", rid=f"r{i}") for i in range(0, 200, 7)])
    rt = build_realtime(cfg, item_category=lambda item: "even" if int(item[1:]) % 2 == 0 else "odd")
    consumer = LogConsumer(log, rt, tmp_path / "rt.npz")
    assert consumer.poll() == 229
    consumer.commit()
    feats = rt.item_features([f"i{k}" for k in range(11)], now=T0 + 400)
    assert feats.source == "stream" and feats.impressions[:, 2].sum() == 229 and feats.clicks[:, 2].sum() == 29
    # publish to the online store (what serving replicas read) and read back in one batch
    store = open_store(f"sqlite:///{tmp_path / 'online.db'}")
    store.put_items({f"i{k}": {"ctr_1h": float(feats.ctr[k, 1]), "trending": float(feats.trending[k])} for k in range(11)},
                    ts=T0 + 400)
    got = store.get_items([f"i{k}" for k in range(11)], ["ctr_1h"], now=T0 + 400)
    assert got.found.all() and abs(got.values[:, 0] - feats.ctr[:, 1]).max() < 1e-12
    assert rt.user_features("u0", now=T0 + 400).n_clicks > 0
    # offline: export the log by day, daily aggregates, point-in-time training rows
    ex = LogExporter(log, tmp_path / "offline")
    assert ex.run() == 229
    daily = daily_item_aggregates(tmp_path / "offline" / "events")
    train = build_training_set(tmp_path / "offline" / "events",
                               [FeatureTable("daily", daily.drop(columns=["date"]), "item_id", ("ctr",))])
    assert len(train) == 200 and train["label"].sum() == 29
    assert train["daily_ctr"].isna().all()  # every impression is on day 1: its aggregate is not out yet
    store.close()
    log.close()


def test_duplicate_of_a_batch_awaiting_fsync_waits_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    log = EventLog(tmp_path / "log")
    gate, entered = threading.Event(), threading.Event()
    real = os.fsync

    def slow(fd: int) -> None:
        entered.set()
        gate.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow)
    results: dict[str, object] = {}
    a = threading.Thread(target=lambda: results.setdefault("a", log.append([_ev(1)])))
    a.start()
    assert entered.wait(5)
    b = threading.Thread(target=lambda: results.setdefault("b", log.append([_ev(1)])))
    b.start()
    b.join(0.3)
    assert b.is_alive(), "a duplicate was acknowledged before the original was durable"
    gate.set()
    a.join(5)
    b.join(5)
    assert results["a"].accepted == ["e1"] and results["b"].duplicates == ["e1"]  # type: ignore[attr-defined]
    monkeypatch.undo()
    log.close()


def _tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained bundle, shared by the test modules of this session (same recipe as
    tests/integration/test_store_faults.py; trained once, on first use)."""
    import time

    from feedrank.config import load_config
    from feedrank.data.synth import WorldConfig, generate_world
    from feedrank.pipeline.build import train_model

    root = tmp_path_factory.getbasetemp() / "tiny-live-model"
    if (root / "model" / "manifest.json").exists():
        return root / "model"
    now = float(int(time.time() // 3600 * 3600))
    generate_world(root / "world", WorldConfig(n_users=400, n_items=150, n_days=2, seed=7, start=now - 2 * 86400,
                                               activity_mean=1.0), progress=False)
    cfg = load_config(None, ["retrieval.epochs=1", "ranking.epochs=1"])
    train_model(root / "world", root / "model", cfg, show_progress=False, say=lambda m: None)
    return root / "model"


@pytest.mark.slow
def test_server_sigkills_during_http_ingest_lose_no_acknowledged_event(tmp_path: Path, tmp_path_factory):
    """The real server (`feedrank serve` subprocess) SIGKILLed during POST /v1/events: every
    event that got a 202 is in the log exactly once (bench ingest --server-kills, bounded)."""
    from feedrank.bench.ingest import bench_server_crash

    model = _tiny_model(tmp_path_factory)
    out = bench_server_crash(tmp_path, model, kills=3, seconds=240, batch=20, say=lambda _m: None)
    assert out["kills"] >= 2 and out["acknowledged"] > 0, out
    assert out["acknowledged_lost"] == 0 and out["duplicates"] == 0, out


def test_resuming_reads_seek_instead_of_rescanning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A consumer tailing a segment resumes at a remembered byte position (a poll costs the
    new records, not the whole segment) and still reads exactly the records after its offset."""
    import feedrank.data.eventlog as el

    log = EventLog(tmp_path / "log")
    log.append([_ev(i) for i in range(50)])
    first = list(log.read())
    scanned = []
    real = el._iter_raw_lines

    def spy(path, limit, start=0):
        for raw, term, end in real(path, limit, start):
            scanned.append(end)
            yield raw, term, end

    monkeypatch.setattr(el, "_iter_raw_lines", spy)
    log.append([_ev(i) for i in range(50, 55)])
    got = list(log.read(first[-1].offset.next()))
    assert [r.event.event_id for r in got] == [f"e{i}" for i in range(50, 55)]
    assert len(scanned) == 5                      # only the new lines were read
    # a resume point before the remembered one still works (reads from the segment start)
    mid = list(log.read(first[10].offset))
    assert [r.event.event_id for r in mid] == [f"e{i}" for i in range(10, 55)]
    # stopping early remembers where it stopped
    it = log.read(first[20].offset)
    assert next(it).event.event_id == "e20"
    it.close()
    scanned.clear()
    assert [r.event.event_id for r in log.read(first[21].offset)][:1] == ["e21"] and len(scanned) == 34
    log.close()
