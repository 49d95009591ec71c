"""Ingest benchmark, the parts without a server: the embedded event log's durable events/s,
the consumer's catch-up rate, counter lag (producer -> ``LogConsumer`` -> ``RealtimeFeatures``)
and the SIGKILL crash test of a writer subprocess. Run together by ``bench.ingest``."""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from feedrank.data.eventlog import EventLog
from feedrank.features.consumer import LogConsumer
from feedrank.features.realtime import RealtimeFeatures
from feedrank.types import Event, EventKind


Say = Callable[[str], None]


def _events(n: int, prefix: str, t0: float, n_items: int = 5000, items: list[str] | None = None) -> list[Event]:
    kinds = (EventKind.IMPRESSION,) * 9 + (EventKind.CLICK,)
    return [Event(event_id=f"{prefix}{i}", ts=t0 + i * 1e-3, user_id=f"u{i % 10_000}",
                  item_id=items[i % len(items)] if items else f"i{i % n_items}", kind=kinds[i % 10],
                  position=i % 20, request_id=f"{prefix}r{i // 20}", propensity=0.5) for i in range(n)]


def _summary(rates: list[float]) -> dict[str, float]:
    return {"best": round(max(rates), 1), "median": round(statistics.median(rates), 1), "min": round(min(rates), 1),
            "runs": len(rates)}


def _pcts(values: Iterable[float]) -> dict[str, float]:
    a = np.asarray(list(values), dtype=np.float64)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4),
            "max": round(float(a.max()), 4)}


# ---------------------------------------------------------------------- embedded log


def bench_embedded(work: Path, events: int, batch: int, writers: int, repeats: int) -> dict[str, Any]:
    """Durable appends/s: ``writers`` threads, each appending its share in ``batch``es."""
    evs = _events(events, "e", time.time())
    shares = [evs[w::writers] for w in range(writers)]
    rates = []
    for r in range(repeats):
        d = work / f"embedded-{batch}-{writers}-{r}"
        shutil.rmtree(d, ignore_errors=True)
        log = EventLog(d)
        barrier = threading.Barrier(writers + 1)

        def write(share: list[Event]) -> None:
            barrier.wait()
            for i in range(0, len(share), batch):
                log.append(share[i : i + batch])

        threads = [threading.Thread(target=write, args=(s,)) for s in shares]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        assert len(log) == events, (len(log), events)
        log.close()
        shutil.rmtree(d, ignore_errors=True)
        rates.append(events / wall)
    return {"batch": batch, "writers": writers, "events": events, "events_per_s": _summary(rates)}


# ---------------------------------------------------------------------- counter lag


class _TimedSink:
    """Wraps ``RealtimeFeatures``: records when each event became visible."""

    def __init__(self, rt: RealtimeFeatures, submitted: dict[str, float]) -> None:
        self.rt, self.submitted, self.lags = rt, submitted, []

    def apply(self, events: Iterable[Event]) -> int:
        events = list(events)
        n = self.rt.apply(events)
        now = time.perf_counter()
        self.lags.extend(now - self.submitted[e.event_id] for e in events)
        return n

    def heartbeat(self, now_wall: float | None = None) -> None:
        self.rt.heartbeat(now_wall)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.rt.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.rt.load_state_dict(state)


def bench_counter_lag(work: Path, rate: float, seconds: float, batch: int | None = None, poll_s: float = 0.05) -> dict[str, Any]:
    """Append at ``rate`` events/s (100 appends/s: batch = rate / 100, at least 100) while a
    consumer thread tails the log into ``RealtimeFeatures``; lag percentiles in seconds."""
    batch = batch or max(100, int(rate // 100))
    d = work / "lag"
    shutil.rmtree(d, ignore_errors=True)
    log = EventLog(d)
    submitted: dict[str, float] = {}
    rt = RealtimeFeatures()
    sink = _TimedSink(rt, submitted)
    consumer = LogConsumer(log, sink, d.parent / "lag.ckpt.npz", commit_every_s=1.0, name="bench").start(poll_s)
    n_batches = int(rate * seconds / batch)
    evs = _events(n_batches * batch, "l", time.time())
    t0 = time.perf_counter()
    behind = 0.0
    for b in range(n_batches):
        due = t0 + b * batch / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            behind = max(behind, -wait)
        chunk = evs[b * batch : (b + 1) * batch]
        now = time.perf_counter()
        for e in chunk:
            submitted[e.event_id] = now
        log.append(chunk)
    produced_s = time.perf_counter() - t0
    deadline = time.perf_counter() + 30.0
    while len(sink.lags) < len(evs) and time.perf_counter() < deadline:
        time.sleep(0.01)
    consumer.stop()
    # visible means readable: the 24 h counters of all items add up to what was appended
    imps, clicks = rt.counts(sorted({e.item_id for e in evs}), evs[-1].ts + 1)
    log.close()
    shutil.rmtree(d, ignore_errors=True)
    (d.parent / "lag.ckpt.npz").unlink(missing_ok=True)
    return {"rate_target": rate, "rate_achieved": round(len(evs) / produced_s, 1), "events": len(evs),
            "visible": len(sink.lags), "lag_s": _pcts(sink.lags), "producer_max_behind_s": round(behind, 4),
            "poll_interval_s": poll_s, "batch": batch, "counted_in_24h_window": int(imps[:, -1].sum())}


def bench_consumer(work: Path, events: int, repeats: int = 3) -> dict[str, Any]:
    """Catch-up speed: a fresh ``LogConsumer`` reading ``events`` already in the log into
    ``RealtimeFeatures`` (read + decode + apply), and ``apply`` alone on decoded events."""
    d = work / "consumer"
    shutil.rmtree(d, ignore_errors=True)
    log = EventLog(d)
    evs = _events(events, "k", time.time())
    for i in range(0, len(evs), 1000):
        log.append(evs[i : i + 1000])
    consume, apply_only = [], []
    for _ in range(repeats):
        c = LogConsumer(log, RealtimeFeatures(), None)
        t0 = time.perf_counter()
        n = c.poll()
        consume.append(n / (time.perf_counter() - t0))
        rt = RealtimeFeatures()
        t0 = time.perf_counter()
        rt.apply(evs)
        apply_only.append(len(evs) / (time.perf_counter() - t0))
    log.close()
    shutil.rmtree(d, ignore_errors=True)
    return {"events": events, "consume_events_per_s": _summary(consume), "apply_only_events_per_s": _summary(apply_only)}


# ---------------------------------------------------------------------- crash test


def crash_writer(root: str, start: int, batch: int) -> None:
    """The process that gets killed: append ``c<start>``, ``c<start+1>``, ... in batches
    forever; print ``ack <last>`` after each append returns (= durable)."""
    log = EventLog(root)
    print(f"ready {log.repaired_bytes}", flush=True)
    i = start
    t0 = time.time()
    while True:
        log.append(_events_range(i, batch, t0))
        i += batch
        print(f"ack {i - 1}", flush=True)


def _events_range(start: int, n: int, t0: float) -> list[Event]:
    return [Event(event_id=f"c{j}", ts=t0, user_id=f"u{j % 100}", item_id=f"i{j % 1000}", kind=EventKind.IMPRESSION)
            for j in range(start, start + n)]


def bench_crash(work: Path, kills: int, seconds: float, batch: int = 20, seed: int = 0, say: Say = print) -> dict[str, Any]:
    d = work / "crash"
    shutil.rmtree(d, ignore_errors=True)
    rng = np.random.default_rng(seed)
    acked = -1  # highest acknowledged event number (acks are in order)
    done_kills = 0
    repaired = 0
    t_end = time.monotonic() + seconds
    code = f"import sys; from feedrank.bench.ingest_local import crash_writer; crash_writer(sys.argv[1], int(sys.argv[2]), {batch})"
    while done_kills < kills and time.monotonic() < t_end:
        proc = subprocess.Popen([sys.executable, "-c", code, str(d), str(acked + 1)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, bufsize=1)
        assert proc.stdout is not None
        head = proc.stdout.readline().split()
        if not head or head[0] != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError(f"crash writer did not start (exit {proc.poll()})")
        repaired += int(head[1]) > 0
        last = [acked]

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.startswith("ack "):
                    last[0] = int(line.split()[1])

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        time.sleep(float(rng.uniform(0.005, 0.15)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(5)
        acked = last[0]
        done_kills += 1
        if done_kills % 25 == 0:
            say(f"crash test: {done_kills} kills, {acked + 1} events acknowledged")
    log = EventLog(d, readonly=True)
    ids = [rec.event.event_id for rec in log.read()]
    log.close()
    nums = np.array([int(i[1:]) for i in ids], dtype=np.int64)
    counts = np.bincount(nums, minlength=acked + 1) if len(nums) else np.zeros(acked + 1, dtype=np.int64)
    lost = int((counts[: acked + 1] == 0).sum())
    dup = int((counts > 1).sum())
    shutil.rmtree(d, ignore_errors=True)
    return {"kills": done_kills, "acknowledged": acked + 1, "in_log": len(ids), "acknowledged_lost": lost,
            "duplicates": dup, "unacknowledged_but_kept": int((nums > acked).sum()),
            "restarts_that_repaired_a_torn_tail": repaired, "batch": batch}
