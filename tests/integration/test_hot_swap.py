"""Hot swap through the registry: a live app follows `current`, answers with the new
version after a promote, refuses a corrupt version while the old one keeps serving, and
follows a rollback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feedrank.config import load_config
from feedrank.data.synth import WorldConfig, generate_world
from feedrank.pipeline.build import train_model
from feedrank.registry.store import ModelRegistry
from feedrank.serving.factory import build_registry_service

NOW = float(int(time.time() // 3600 * 3600))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("swap")
    world = root / "world"
    generate_world(world, WorldConfig(n_users=600, n_items=200, n_days=3, seed=5, start=NOW - 3 * 86400, activity_mean=1.0),
                   progress=False)
    out = []
    for seed in (1, 2):
        cfg = load_config(None, ["retrieval.epochs=1", "ranking.epochs=1", f"training.seed={seed}"])
        train_model(world, root / f"m{seed}", cfg, show_progress=False, say=lambda m: None)
        out.append(root / f"m{seed}")
    return out[0], out[1]


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
    finally:
        manager.stop()
        event_log.close()


def test_twenty_swaps_under_a_steady_request_stream(two_models, tmp_path: Path):
    """No failed request and no 5xx while the model is swapped 20 times."""
    import threading

    m1, m2 = two_models
    reg = ModelRegistry(tmp_path / "registry")
    v1 = reg.publish(m1, promote=True)
    v2 = reg.publish(m2)
    app, event_log, manager, _ = build_registry_service(str(tmp_path / "registry"), str(tmp_path / "events"))
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()
    try:
        with TestClient(app) as client:
            def stream() -> None:
                i = 0
                while not stop.is_set():
                    r = client.get("/v1/feed", params={"user_id": f"u{i % 50}", "k": 5})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["model_version"])
                    i += 1

            t = threading.Thread(target=stream)
            t.start()
            swapped = 0
            for n in range(20):
                reg.promote(v2 if n % 2 == 0 else v1)
                swapped += manager.check_now().result == "swapped"
            stop.set()
            t.join(30)
    finally:
        manager.stop()
        event_log.close()
    assert swapped == 20
    assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
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
