"""Hot swap through the registry: a live app follows `current`, answers with the new
version after a promote, refuses a corrupt version while the old one keeps serving, and
follows a rollback."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feedrank.registry.store import ModelRegistry
from feedrank.serving.factory import build_registry_service

# the `two_models` fixture (two small trained bundles) is in tests/integration/conftest.py


def test_promote_swaps_corrupt_is_refused_rollback_returns(two_models, tmp_path: Path):
    m1, m2 = two_models
    reg = ModelRegistry(tmp_path / "registry")
    reg.publish(m1, promote=True)
    app, event_log, manager, _ = build_registry_service(str(tmp_path / "registry"), str(tmp_path / "events"))
    try:
        with TestClient(app) as client:
            def version() -> str:
                r = client.get("/v1/feed", params={"user_id": "u1", "k": 5})
                assert r.status_code == 200
                return r.json()["model_version"]

            v1 = version()
            assert manager.check_now().result == "unchanged"

            reg.publish(m2, promote=True)
            res = manager.check_now()
            assert res.result == "swapped" and res.version == 2
            v2 = version()
            assert v2 != v1 and manager.registry_version == 2

            # a version that rots on disk after its promote is refused; v2 keeps serving
            v3 = reg.publish(m1, promote=True)
            (reg.path(v3) / "ranker.pt").write_bytes(b"\x00" * 64)
            res = manager.check_now()
            assert res.result == "failed" and "ranker.pt" in res.detail
            assert version() == v2
            assert manager.check_now().result == "skipped"  # not retried until current moves
            metrics = client.get("/metrics").text
            assert 'feedrank_model_swaps_total{result="failed"} 1.0' in metrics
            assert 'feedrank_model_swaps_total{result="ok"} 1.0' in metrics
            assert "feedrank_model_registry_version 2.0" in metrics

            assert reg.rollback() == 2
            assert manager.check_now().result == "unchanged"   # 2 is what it serves
            reg.promote(1)
            assert manager.check_now().result == "swapped"
            assert version() == v1
            assert gc.get_freeze_count() > 0  # the loaded model is out of the full collections (serving/heap.py)
    finally:
        gc.unfreeze()
        manager.stop()
        event_log.close()


def test_twenty_swaps_under_a_steady_request_stream(two_models, tmp_path: Path):
    """No failed request and no 5xx while the model is swapped 20 times. Each swap waits
    (bounded) until the stream has completed a request after it, so the stream really
    overlaps every swap however the two loaded cores schedule the threads."""
    import threading

    m1, m2 = two_models
    reg = ModelRegistry(tmp_path / "registry")
    v1 = reg.publish(m1, promote=True)
    v2 = reg.publish(m2)
    app, event_log, manager, _ = build_registry_service(str(tmp_path / "registry"), str(tmp_path / "events"))
    statuses: list[int] = []
    errors: list[BaseException] = []
    versions: set[str] = set()
    done = threading.Semaphore(0)
    stop = threading.Event()
    try:
        with TestClient(app) as client:
            def stream() -> None:
                i = 0
                while not stop.is_set():
                    try:
                        r = client.get("/v1/feed", params={"user_id": f"u{i % 50}", "k": 5})
                    except BaseException as exc:  # a failed request is a test failure, not a dead thread
                        errors.append(exc)
                        return
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["model_version"])
                    done.release()
                    i += 1

            t = threading.Thread(target=stream, daemon=True)
            t.start()
            swapped = 0
            for n in range(20):
                reg.promote(v2 if n % 2 == 0 else v1)
                swapped += manager.check_now().result == "swapped"
                while done.acquire(blocking=False):  # forget requests completed before this swap
                    pass
                assert done.acquire(timeout=60), "the request stream stalled"
            stop.set()
            t.join(60)
            assert not t.is_alive()
    finally:
        stop.set()
        manager.stop()
        event_log.close()
    assert not errors, errors
    assert swapped == 20
    assert len(statuses) >= 20 and all(s == 200 for s in statuses), sorted(set(statuses))
    assert len(versions) == 2


def test_missing_index_file_is_refused(two_models, tmp_path: Path):
    m1, m2 = two_models
    reg = ModelRegistry(tmp_path / "registry")
    reg.publish(m1, promote=True)
    app, event_log, manager, _ = build_registry_service(str(tmp_path / "registry"), str(tmp_path / "events"))
    try:
        v = reg.publish(m2, promote=True)
        (reg.path(v) / "index.faiss").unlink()
        res = manager.check_now()
        assert res.result == "failed" and "index.faiss" in res.detail
        with TestClient(app) as client:
            assert client.get("/v1/feed", params={"user_id": "u1", "k": 5}).status_code == 200
    finally:
        manager.stop()
        event_log.close()
