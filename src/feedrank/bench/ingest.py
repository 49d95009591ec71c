"""Ingest benchmark: durable events/s (embedded log and HTTP), counter lag, crash test.

    feedrank bench ingest --json
    feedrank bench ingest --model var/demo/full/model --kills 100 --json

Parts (each bounded in count and time; load goes to 127.0.0.1 only):

* ``embedded``: ``EventLog.append`` of pre-built events in batches (one fsync per batch,
  or fewer with concurrent writers sharing a group commit), on a fresh log per repeat,
  in ``--dir`` (a real disk: fsync on tmpfs would be free). Best, median, min per setting.
* ``http``: a ``feedrank serve`` subprocess on a free local port; client threads POST
  batches to ``/v1/events`` (the 202 means fsync'd); accepted events/s. Needs ``--model``.
* ``counter_lag``: a producer appends at a fixed rate; a ``LogConsumer`` thread tails the
  log into ``RealtimeFeatures``; lag = visible in the counters - append submitted (s).
* ``server_crash`` (with ``--model``): ``feedrank serve`` subprocesses are SIGKILLed
  ``--server-kills`` times while client threads POST /v1/events; a request that failed
  is re-sent (same event ids) to the next server; afterwards every event that got a 202
  must be in the log exactly once.
* ``http_counter_lag`` (with ``--model``, ``--lag-seconds``): POST /v1/events to a
  ``feedrank serve`` subprocess whose online store is a private redis-server; lag = the
  clicks visible in the store - the 202.
* ``feature_reads``: the request path's live-feature reads (500 candidates, validated,
  under the time budget) per store backend; Redis on a private redis-server.
* ``crash``: a writer subprocess appends batches and reports each acknowledged batch; it
  is killed with SIGKILL ``--kills`` times at random moments and restarted, re-sending
  from its last acknowledged event (so written-but-unacknowledged events come again). The
  log is then read: every acknowledged event must be there exactly once.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
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
    code = f"import sys; from feedrank.bench.ingest import crash_writer; crash_writer(sys.argv[1], int(sys.argv[2]), {batch})"
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


def _start_server(model: Path, events_dir: Path, errlog: Path, port: int, overrides: tuple[str, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "feedrank.cli.main", "serve", "--model", str(model), "--port", str(port),
           "--events-dir", str(events_dir), "--log-level", "warning", "--workers", "1", *overrides]  # one writer: kill -9 hits it
    with open(errlog, "ab") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


def _wait_ready(url: str, server: subprocess.Popen, errlog: Path, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            tail = errlog.read_text(errors="replace")[-2000:] if errlog.exists() else ""
            server.kill()
            server.wait()
            raise RuntimeError(f"server did not become ready (exit {server.poll()}):\n{tail}")
        time.sleep(0.05)


def _stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (the app's lifespan flushes and closes the log), SIGKILL after 30 s."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _catalog_ids(model: Path, n: int = 1000) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(Path(model) / "items.parquet", columns=["item_id"]).column(0).to_pylist()[:n]


def bench_server_crash(work: Path, model: Path, kills: int, seconds: float, batch: int = 50, clients: int = 2,
                       seed: int = 0, say: Say = print) -> dict[str, Any]:
    """Kill a ``feedrank serve`` subprocess ``kills`` times (SIGKILL, at a random moment
    0.05-1 s after it is ready) while ``clients`` threads POST batches to /v1/events.
    A batch whose request failed is re-sent, same ids, to the next server. Afterwards,
    every event of every batch that got a 202 must be in the log exactly once."""
    import httpx

    d = work / "server-crash"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    errlog = work / "server-crash.log"
    errlog.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    items = _catalog_ids(model)
    state = {"url": None, "stop": False}
    cond = threading.Condition()
    acked: list[set[str]] = [set() for _ in range(clients)]
    sent = [0] * clients
    failures = [0]
    t0 = time.time()

    def client(c: int) -> None:
        n = 0
        pending: dict | None = None
        while True:
            with cond:
                while state["url"] is None and not state["stop"]:
                    cond.wait(0.5)
                if state["stop"]:
                    return
                url = state["url"]
            if pending is None:
                ids = [f"k{c}-{n + j}" for j in range(batch)]
                n += batch
                pending = {"events": [{"event_id": e, "ts": t0, "user_id": f"u{hash(e) % 500}", "item_id": items[k % len(items)],
                                       "kind": "impression", "position": k % 20, "request_id": f"r{c}-{n}"}
                                      for k, e in enumerate(ids)]}
            try:
                resp = httpx.post(f"{url}/v1/events", json=pending, timeout=10)
            except httpx.HTTPError:  # the server died mid-request: re-send to the next one
                failures[0] += 1
                with cond:
                    if state["url"] == url:
                        state["url"] = None
                continue
            if resp.status_code != 202:
                raise RuntimeError(f"POST /v1/events: {resp.status_code} {resp.text[:300]}")
            body = resp.json()
            if body["errors"]:
                raise RuntimeError(f"events rejected: {body['errors'][:3]}")
            acked[c].update(ev["event_id"] for ev in pending["events"])  # accepted or duplicate: durable
            sent[c] += 1
            pending = None

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    done = 0
    startup: list[float] = []
    start_failures: list[str] = []
    t_end = time.monotonic() + seconds
    try:
        while done < kills and time.monotonic() < t_end:
            t_start = time.monotonic()
            for attempt in range(3):  # a start can fail for reasons outside the test (a port taken meanwhile)
                port = _free_port()
                server = _start_server(model, d, errlog, port)
                try:
                    _wait_ready(f"http://127.0.0.1:{port}", server, errlog)
                    break
                except RuntimeError as exc:
                    start_failures.append(str(exc)[-500:])
                    if attempt == 2:
                        raise
            startup.append(time.monotonic() - t_start)
            with cond:
                state["url"] = f"http://127.0.0.1:{port}"
                cond.notify_all()
            time.sleep(float(rng.uniform(0.05, 1.0)))
            server.send_signal(signal.SIGKILL)
            server.wait()
            with cond:
                state["url"] = None
            done += 1
            if done % 10 == 0:
                say(f"server crash test: {done} kills, {sum(len(a) for a in acked):,} events acknowledged")
    finally:
        with cond:
            state["stop"] = True
            cond.notify_all()
        for t in threads:
            t.join(30)
    log = EventLog(d)  # as the next server would: a torn tail of the last kill is repaired
    ids = [rec.event.event_id for rec in log.read()]
    repaired = log.repaired_bytes
    log.close()
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    all_acked = set().union(*acked)
    lost = sum(1 for i in all_acked if i not in counts)
    dup = sum(1 for v in counts.values() if v > 1)
    shutil.rmtree(d, ignore_errors=True)
    errlog.unlink(missing_ok=True)
    return {"kills": done, "acknowledged": len(all_acked), "acknowledged_requests": sum(sent), "in_log": len(ids),
            "acknowledged_lost": lost, "duplicates": dup, "unacknowledged_but_kept": len(set(counts) - all_acked),
            "failed_requests_resent": failures[0], "server_startup_s": _pcts(startup), "failed_starts": start_failures,
            "batch": batch, "clients": clients,
            "repaired_bytes_last_open": repaired}


def bench_http_counter_lag(work: Path, model: Path, seconds: float = 10.0, posts_per_s: float = 50.0, batch: int = 20,
                           n_items: int = 50, say: Say = print) -> dict[str, Any]:
    """Event to feature visible through the real path: a ``feedrank serve`` subprocess with
    its online store on a private redis-server; clicks are POSTed to /v1/events (``batch``
    per request, ``posts_per_s``); a poller reads the items' ``clicks_86400`` from Redis
    every 10 ms. Lag = first time the store shows a POST's clicks - its 202 (seconds)."""
    import httpx

    from feedrank.features.store.factory import open_store
    from feedrank.features.store.redis_server import RedisServer

    try:
        srv = RedisServer.start(work / "lag-redis")
    except FileNotFoundError as exc:
        return {"skipped": str(exc)}
    d = work / "http-lag-events"
    shutil.rmtree(d, ignore_errors=True)
    errlog = work / "http-lag.log"
    port = _free_port()
    store_url = f"{srv.url}/0?prefix=lag/"
    server = _start_server(model, d, errlog, port, (f"features.store_url={store_url}", "features.poll_s=0.05"))
    url = f"http://127.0.0.1:{port}"
    lags: list[float] = []
    try:
        _wait_ready(url, server, errlog)
        items = _catalog_ids(model, n_items)
        store = open_store(store_url)
        pending: list[tuple[int, float, float]] = []   # (item index, target count, 202 time)
        lock = threading.Lock()
        done = threading.Event()

        def poll() -> None:
            while not done.is_set() or pending:
                got = store.get_items(items, ["clicks_86400"], time.time()).values[:, 0]
                t = time.perf_counter()
                with lock:
                    keep = []
                    for j, target, t_ack in pending:
                        if got[j] >= target:
                            lags.append(t - t_ack)
                        else:
                            keep.append((j, target, t_ack))
                    pending[:] = keep
                if done.is_set() and time.perf_counter() > t_stop + 30:
                    return
                time.sleep(0.01)

        totals = [0] * len(items)
        t_stop = time.perf_counter() + seconds
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        n = 0
        with httpx.Client(base_url=url, timeout=30) as cl:
            while time.perf_counter() < t_stop:
                t_next = time.perf_counter() + 1.0 / posts_per_s
                j = n % len(items)
                evs = [{"event_id": f"lag{n}-{k}", "ts": time.time(), "user_id": f"u{k}", "item_id": items[j],
                        "kind": "click"} for k in range(batch)]
                resp = cl.post("/v1/events", json={"events": evs})
                t_ack = time.perf_counter()
                resp.raise_for_status()
                totals[j] += batch
                with lock:
                    pending.append((j, float(totals[j]), t_ack))
                n += 1
                time.sleep(max(0.0, t_next - time.perf_counter()))
        done.set()
        poller.join(40)
        store.close()
        unseen = len(pending)
    finally:
        _stop_server(server)
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)
        errlog.unlink(missing_ok=True)
    return {"posts": n, "events": n * batch, "events_per_s_offered": posts_per_s * batch, "never_visible": unseen,
            "lag_s": _pcts(lags), "store": "redis (private)", "consumer_poll_s": 0.05}


# ---------------------------------------------------------------------- feature reads in a request


def bench_feature_reads(work: Path, backends: tuple[str, ...] = ("memory", "sqlite", "redis"), candidates: int = 500,
                        repeats: int = 200, say: Say = print) -> dict[str, Any]:
    """What the request path pays for live features: ``LiveFeatures.read_items`` for
    ``candidates`` items (one batched, validated store read under the time budget) and
    ``read_user``, per backend, after publishing 20k events. Redis: a private
    redis-server on a free port (skipped when it is not installed)."""
    from feedrank.features.live import LiveFeatures
    from feedrank.features.store.factory import open_store
    from feedrank.features.store.redis_server import RedisServer

    class _Snap:  # the fields LiveFeatures.bind reads from a model's training snapshot
        user_ids = np.array(["u0"])
        histories = np.full((1, 3), -1)
        user_clicks = np.array([1])
        item_impressions = np.full(5000, 100.0)
        item_clicks = np.full(5000, 5.0)

    ids = [f"i{i}" for i in range(5000)]
    out: dict[str, Any] = {"candidates": candidates, "repeats": repeats}
    srv = None
    for backend in backends:
        if backend == "redis":
            try:
                srv = RedisServer.start(work / "redis")
            except FileNotFoundError as exc:
                out[backend] = {"skipped": str(exc)}
                continue
            url = srv.url + "/0"
        else:
            url = "memory://" if backend == "memory" else f"sqlite:///{work / 'features.db'}"
        store = open_store(url, ttl_s=1e7, socket_timeout=1.0, retries=0)
        live = LiveFeatures(store, RealtimeFeatures(), read_timeout_s=1.0)
        live.bind(_Snap(), ids, ["c"] * len(ids))
        now = time.time()
        live.publisher.apply(_events(20_000, "f", now, items=ids))
        live.publisher.heartbeat()
        cand = ids[:candidates]
        fb = np.zeros(candidates)
        for _ in range(5):
            live.read_items(cand, now, fb, fb)
        item_ms, user_ms = [], []
        for r in range(repeats):
            t = time.perf_counter()
            got = live.read_items(cand, now, fb, fb)
            item_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            live.read_user(f"u{r % 100}", now)
            user_ms.append((time.perf_counter() - t) * 1000)
        assert got.status == "live", got.status
        out[backend] = {"read_items_ms": _pcts(item_ms), "read_user_ms": _pcts(user_ms)}
        say(f"feature reads, {backend}: {candidates} items p50 {out[backend]['read_items_ms']['p50']:.2f} ms, "
            f"p99 {out[backend]['read_items_ms']['p99']:.2f} ms; user p50 {out[backend]['read_user_ms']['p50']:.2f} ms")
        live.stop()
        store.close()
        if srv is not None:
            srv.stop()
            srv = None
    (work / "features.db").unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------- HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_http(work: Path, model: Path, batch: int, clients: int, max_requests: int, seconds: float,
               say: Say = print) -> dict[str, Any]:
    import httpx

    d = work / f"http-events-{batch}"
    shutil.rmtree(d, ignore_errors=True)
    port = _free_port()
    cmd = [sys.executable, "-m", "feedrank.cli.main", "serve", "--model", str(model), "--port", str(port),
           "--events-dir", str(d), "--log-level", "warning", "--workers", "1"]  # one process's log and fsyncs
    errlog = work / f"server-{batch}.log"
    with open(errlog, "wb") as err:
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server, errlog)
        items = sorted({it["item_id"] for u in range(5)
                        for it in httpx.get(f"{url}/v1/feed", params={"user_id": f"bench{u}", "k": 200}, timeout=30).json()["items"]})
        counter = iter(range(max_requests))
        lock = threading.Lock()
        accepted = [0]
        lat: list[float] = []
        t_end = time.monotonic() + seconds
        now = time.time() - 60

        def client(c: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as cl:
                while time.monotonic() < t_end:
                    with lock:
                        r = next(counter, None)
                    if r is None:
                        return
                    evs = _events(batch, f"h{r}-", now, items=items)
                    body = {"events": [{"event_id": e.event_id, "ts": e.ts, "user_id": e.user_id, "item_id": e.item_id,
                                        "kind": e.kind.value, "position": e.position, "request_id": e.request_id}
                                       for e in evs]}
                    t = time.perf_counter()
                    resp = cl.post("/v1/events", json=body)
                    ms = (time.perf_counter() - t) * 1000
                    resp.raise_for_status()
                    with lock:
                        accepted[0] += resp.json()["accepted"]
                        lat.append(ms)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        _stop_server(server)
    errlog.unlink(missing_ok=True)
    log = EventLog(d, readonly=True)
    in_log = len(log)
    log.close()
    shutil.rmtree(d, ignore_errors=True)
    return {"batch": batch, "clients": clients, "requests": len(lat), "accepted": accepted[0], "in_log": in_log,
            "events_per_s": round(accepted[0] / wall, 1), "request_ms": _pcts(lat)}


# ---------------------------------------------------------------------- all together


def run_ingest_bench(work: Path, *, events: int = 200_000, batches: tuple[int, ...] = (100, 1000), writers: tuple[int, ...] = (1, 4),
                     repeats: int = 3, model: Path | None = None, http_requests: int = 2000, http_seconds: float = 20.0,
                     lag_rate: float = 5000.0, lag_seconds: float = 10.0, kills: int = 100, crash_seconds: float = 120.0,
                     server_kills: int = 100, server_crash_seconds: float = 1800.0, feature_reads: bool = True,
                     say: Say = print) -> dict[str, Any]:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"cores": os.cpu_count(), "work_dir": str(work)}
    emb = []
    for b in batches:
        for w in writers:
            r = bench_embedded(work, events, b, w, repeats)
            say(f"embedded log: batch {b}, {w} writer(s): best {r['events_per_s']['best']:,.0f} events/s "
                f"(median {r['events_per_s']['median']:,.0f}, min {r['events_per_s']['min']:,.0f})")
            emb.append(r)
    out["embedded"] = emb
    if model is not None:
        out["http"] = []
        for b in (100, 1000):
            try:
                r = bench_http(work, Path(model), b, clients=4, seconds=http_seconds, say=say,
                               max_requests=max(1, http_requests if b == 100 else http_requests // 10))
            except RuntimeError as exc:  # e.g. the bundle no longer loads: report it, measure the rest
                say(f"http: batch {b}: FAILED: {exc}")
                out["http"].append({"batch": b, "error": str(exc)[-1500:]})
                continue
            say(f"http: batch {b}, 4 clients: {r['events_per_s']:,.0f} accepted events/s, request p99 {r['request_ms'].get('p99')} ms")
            out["http"].append(r)
    else:
        out["http"] = {"skipped": "no --model given (the server needs a model bundle)"}
    out["consumer"] = bench_consumer(work, min(events, 200_000), repeats)
    say(f"consumer catch-up: best {out['consumer']['consume_events_per_s']['best']:,.0f} events/s "
        f"(apply alone {out['consumer']['apply_only_events_per_s']['best']:,.0f})")
    if lag_seconds > 0:
        out["counter_lag"] = bench_counter_lag(work, lag_rate, lag_seconds)
        say(f"counter lag at {out['counter_lag']['rate_achieved']:,.0f} events/s: p99 {out['counter_lag']['lag_s'].get('p99')} s")
    if kills > 0:
        out["crash"] = bench_crash(work, kills, crash_seconds, say=say)
        c = out["crash"]
        say(f"crash test: {c['kills']} SIGKILLs, {c['acknowledged']:,} acknowledged, {c['acknowledged_lost']} lost, "
            f"{c['duplicates']} duplicated")
    if feature_reads:
        out["feature_reads"] = bench_feature_reads(work, say=say)
    if model is not None and lag_seconds > 0:
        out["http_counter_lag"] = bench_http_counter_lag(work, Path(model), seconds=lag_seconds, say=say)
        lag = out["http_counter_lag"].get("lag_s", {})
        say(f"counter lag through `feedrank serve` + Redis store: p50 {lag.get('p50')} s, p99 {lag.get('p99')} s")
    if model is not None and server_kills > 0:
        out["server_crash"] = bench_server_crash(work, Path(model), server_kills, server_crash_seconds, say=say)
        c = out["server_crash"]
        say(f"server crash test: {c['kills']} SIGKILLs of `feedrank serve`, {c['acknowledged']:,} events acknowledged "
            f"(202), {c['acknowledged_lost']} lost, {c['duplicates']} duplicated")
    best = max((r["events_per_s"]["best"] for r in emb), default=0.0)
    out["targets"] = {
        "embedded_50k_events_per_s": best >= 50_000,
        "counter_lag_p99_le_5s": bool(out.get("counter_lag", {}).get("lag_s", {}).get("p99", float("inf")) <= 5.0),
        "zero_acknowledged_lost": bool(out.get("crash", {}).get("acknowledged_lost", 1) == 0
                                       and out.get("crash", {}).get("duplicates", 1) == 0),
        "server_kills_zero_acknowledged_lost": bool(out.get("server_crash", {}).get("acknowledged_lost", 1) == 0
                                                    and out.get("server_crash", {}).get("duplicates", 1) == 0
                                                    and out.get("server_crash", {}).get("acknowledged", 0) > 0),
    }
    return out
