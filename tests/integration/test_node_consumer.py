"""`feedrank serve --workers 2 features.consumer=node`: one consumer process applies every
worker's events once into the shared-memory mirror, both workers serve its live features
without a consumer of their own, and a killed consumer is started again while the
workers go on answering."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx

from feedrank.data.eventlog import EventLog
from feedrank.features.mirror_reader import MirrorReader
from feedrank.serving.serve_process import start_serve


def _gauge(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return None if m is None else float(m.group(1))


def _events_in_log(root: Path) -> int:
    n = 0
    for part in sorted(root.glob("w*")):
        with EventLog(part, readonly=True) as log:
            n += sum(1 for _ in log.read())
    return n


def _node_pids(group: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            if b"feedrank.serving.node_consumer" in cmd and os.getpgid(int(d.name)) == group:
                pids.append(int(d.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


def _writer_pid(reader: MirrorReader) -> int | None:
    try:
        return int(reader.stats()["writer_pid"])
    except (ConnectionError, ValueError, OSError):  # another run's mirror, gone or being replaced
        return None


def _feed(url: str, user: str) -> dict:
    with httpx.Client(timeout=30) as c:  # a fresh connection: either worker may answer
        r = c.get(f"{url}/v1/feed", params={"user_id": user, "k": 5})
    assert r.status_code == 200, r.text
    return r.json()


def _wait_applied(url: str, want: int, timeout_s: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        texts = []
        for _ in range(4):
            with httpx.Client(timeout=10) as c:
                texts.append(c.get(f"{url}/metrics").text)
        applied = [_gauge(t, "feedrank_features_node_consumer_applied") for t in texts]
        if all(a == want for a in applied):
            return texts
        assert time.monotonic() < deadline, (applied, want)
        time.sleep(0.5)


def test_one_node_consumer_feeds_both_workers_and_comes_back(two_models, tmp_path: Path) -> None:
    events = tmp_path / "events"
    with start_serve(two_models[0], workers=2, events_dir=events, errlog=tmp_path / "serve.err",
                     overrides=("features.consumer=node",)) as srv:
        url = srv.url
        pids = _node_pids(srv.proc.pid)
        assert len(pids) == 1, pids
        for i in range(60):  # fresh connections: both workers answer some
            _feed(url, f"u{i % 30}")
        first = _feed(url, "u1")
        item = first["items"][0]["item_id"]
        clicks = [{"event_id": f"c{k}", "ts": time.time(), "user_id": "u1", "item_id": item, "kind": "click"}
                  for k in range(5)]
        with httpx.Client(timeout=30) as c:
            assert c.post(f"{url}/v1/events", json={"events": clicks}).json()["accepted"] == 5
        time.sleep(0.5)  # the impression writer's linger
        texts = _wait_applied(url, _events_in_log(events))
        for t in texts:  # each event applied once, by the node; no worker runs a consumer of its own
            assert "feedrank_features_consumer_applied_total" not in t
            assert _gauge(t, "feedrank_features_node_consumer_errors") == 0.0
            assert 'feedrank_features_served_total{status="default"} 0.0' in t

        os.kill(pids[0], signal.SIGKILL)
        statuses = [_feed(url, f"u{i % 30}") and 200 for i in range(20)]  # served while it is down
        assert statuses == [200] * 20
        deadline = time.monotonic() + 60
        while not (_node_pids(srv.proc.pid) and _node_pids(srv.proc.pid) != pids):
            assert time.monotonic() < deadline, "the node consumer was not started again"
            time.sleep(0.2)
        more = [{"event_id": f"d{k}", "ts": time.time(), "user_id": "u2", "item_id": item, "kind": "click"}
                for k in range(3)]
        with httpx.Client(timeout=30) as c:
            assert c.post(f"{url}/v1/events", json={"events": more}).json()["accepted"] == 3
        # the new process publishes into a new mirror: the old clicks (resumed from its
        # checkpoint, or the log read again from its start) and the new ones
        new_pid = _node_pids(srv.proc.pid)[0]
        deadline = time.monotonic() + 60
        while True:
            mine = [m for m in map(MirrorReader, Path("/dev/shm").glob("feedrank-*/features.mirror"))
                    if _writer_pid(m) == new_pid]
            u1 = mine[0].get_user("u1", time.time()) if mine else None
            u2 = mine[0].get_user("u2", time.time()) if mine else None
            if u1 and u2 and u2["n_clicks"] >= 3 and u1["n_clicks"] >= 5:
                break
            assert time.monotonic() < deadline, (len(mine), u1, u2)
            time.sleep(0.5)
        assert _feed(url, "u2")["items"]
        # a SIGTERM to the consumer alone (not a server stop) is a failure too: started again
        os.kill(new_pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not (_node_pids(srv.proc.pid) and _node_pids(srv.proc.pid) != [new_pid]):
            assert time.monotonic() < deadline, "the node consumer was not started again after a SIGTERM"
            time.sleep(0.2)
    assert (tmp_path / "serve.err").read_text().count("exited with status") >= 2


def test_node_consumer_follows_the_registry_and_posted_items(two_models, tmp_path: Path) -> None:
    """In process: the consumer binds the registry's current version, rebinds when it
    moves, learns posted items' categories from the item logs, and publishes a click's
    user record (history and category share) into the mirror."""
    import threading

    import pyarrow.parquet as pq

    from feedrank.data.itemlog import ItemLog
    from feedrank.registry.store import ModelRegistry
    from feedrank.serving.node_consumer import NodeConsumer
    from feedrank.types import Event, EventKind

    m1, m2 = two_models
    reg = ModelRegistry(tmp_path / "registry")
    v1 = reg.publish(m1, promote=True)
    events = tmp_path / "events"
    ItemLog(events / "w0" / "items.jsonl").append([{"item_id": "posted-1", "title": "t", "category": "brand-new"}])
    with EventLog(events / "w0") as log:
        log.append([Event("e1", time.time(), "fan", "posted-1", EventKind.CLICK)])
    spec = {"registry_dir": str(tmp_path / "registry"), "events_dir": str(events), "mirror_path": str(tmp_path / "m"),
            "overrides": []}
    node = NodeConsumer(spec)
    assert node.version == v1
    stop = threading.Event()
    runner = threading.Thread(target=node.run, args=(stop,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        reader = None
        while True:
            if (tmp_path / "m").exists():
                reader = reader or MirrorReader(tmp_path / "m")
                rec = reader.get_user("fan", time.time())
                if rec is not None:
                    break
            assert time.monotonic() < deadline, "the click was not published"
            time.sleep(0.1)
        assert rec["n_clicks"] == 1.0 and rec["aff:brand-new"] == 1.0 and "c0" in rec
        v2 = reg.publish(m2, promote=True)
        node._follow_registry()
        assert node.version == v2
        cats = pq.read_table(reg.path(v2) / "items.parquet", columns=["item_id", "category"]).to_pydict()
        first = cats["item_id"][0]
        assert node.cats[first] == cats["category"][0] and node.cats["posted-1"] == "brand-new"
        assert node.rt._category("posted-1") == "brand-new"
    finally:
        stop.set()
        runner.join(30)
        node.close()
    assert (events / "consumers" / "node-realtime.npz").exists()  # committed on close
