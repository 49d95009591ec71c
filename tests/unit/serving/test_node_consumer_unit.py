"""The node consumer's small decisions (serving/node_consumer.py): when it applies, where
its mirror lives, and which checkpoint it resumes from."""

from __future__ import annotations

import os
from pathlib import Path

from feedrank.config import load_config
from feedrank.serving.node_consumer import adopt_freshest_checkpoint, mirror_path_for, wants_node_consumer


def test_node_consumer_applies_to_the_embedded_log_and_memory_store_only() -> None:
    assert wants_node_consumer(load_config(None, []))  # the default
    assert not wants_node_consumer(load_config(None, ["features.consumer=worker"]))
    assert not wants_node_consumer(load_config(None, ["features.live=false"]))
    assert not wants_node_consumer(load_config(None, ["features.store_url=redis://127.0.0.1:6379/0"]))
    assert not wants_node_consumer(load_config(None, ["serving.events_url=redis://127.0.0.1:6379/0"]))


def test_mirror_path_is_per_run(tmp_path: Path) -> None:
    a, b = mirror_path_for(tmp_path / "run-a"), mirror_path_for(tmp_path / "run-b")
    assert a != b and a.endswith("features.mirror") and "run-a" in a


def _write(p: Path, body: bytes, mtime: float) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(body)
    os.utime(p, (mtime, mtime))


def test_the_newest_checkpoint_of_the_node_is_adopted(tmp_path: Path) -> None:
    node = tmp_path / "consumers" / "node-realtime.npz"
    assert adopt_freshest_checkpoint(tmp_path, node) is None and not node.exists()  # nothing to adopt
    _write(tmp_path / "w0" / "consumers" / "realtime.npz", b"w0", 100.0)
    _write(tmp_path / "w1" / "consumers" / "realtime.npz", b"w1", 200.0)
    assert adopt_freshest_checkpoint(tmp_path, node) == tmp_path / "w1" / "consumers" / "realtime.npz"
    assert node.read_bytes() == b"w1"
    _write(node, b"node", 300.0)  # the node's own is newer now: kept
    assert adopt_freshest_checkpoint(tmp_path, node) is None and node.read_bytes() == b"node"
    _write(tmp_path / "w0" / "consumers" / "realtime.npz", b"w0-later", 400.0)  # worker consumers ran since
    assert adopt_freshest_checkpoint(tmp_path, node) is not None and node.read_bytes() == b"w0-later"


def _keeper(code: str, restart_s: float = 0.05):
    import sys

    from feedrank.serving.node_consumer import NodeKeeper

    return NodeKeeper(dict(os.environ), restart_s=restart_s, argv=[sys.executable, "-c", code]).start()


def test_the_keeper_restarts_on_any_exit_but_not_used_and_stops() -> None:
    import time

    k = _keeper("import sys; sys.exit(3)")  # NOT_USED: this configuration has no node consumer
    k._thread.join(10)
    assert not k._thread.is_alive() and k.starts == 1
    k = _keeper("import sys; sys.exit(0)")  # a clean exit the keeper did not ask for: started again
    deadline = time.monotonic() + 10
    while k.starts < 3:
        assert time.monotonic() < deadline, k.starts
        time.sleep(0.05)
    k.stop(timeout_s=10)
    assert not k._thread.is_alive()
    k = _keeper("import time; time.sleep(60)")
    deadline = time.monotonic() + 10
    while k.proc is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    k.stop(timeout_s=10)  # terminates the running one, starts no other
    assert k.proc.poll() is not None and k.starts == 1 and not k._thread.is_alive()


def test_mirror_goes_to_the_run_folder_without_room_in_shm(tmp_path: Path) -> None:
    assert mirror_path_for(tmp_path / "run", need_bytes=1 << 60).startswith(str(tmp_path / "run"))
