"""Ingest benchmark, the parts that start servers (bound to 127.0.0.1): ``feedrank serve``
subprocesses for HTTP events/s, the server crash test and the HTTP counter lag, and a
private redis-server for the live-feature reads of a request. Run together by ``bench.ingest``."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from feedrank.bench.ingest_local import Say, _events, _pcts
from feedrank.data.eventlog import EventLog
from feedrank.features.realtime import RealtimeFeatures
from feedrank.serving.server import free_port
from feedrank.types import Event


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
                port = free_port()
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
    port = free_port()
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


def bench_http(work: Path, model: Path, batch: int, clients: int, max_requests: int, seconds: float,
               say: Say = print) -> dict[str, Any]:
    import httpx

    d = work / f"http-events-{batch}"
    shutil.rmtree(d, ignore_errors=True)
    port = free_port()
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
