"""The whole loop on a tiny synthetic world: synth -> train -> eval -> serve -> feed -> events.

Also checks that planted structure is recovered: a new user who clicks only one topic is
then served mostly that topic.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from feedrank.cli.main import cli
from feedrank.serving.factory import build_service
from feedrank.errors import ModelLoadError
from feedrank.pipeline.artifacts import load_artifacts

NOW = float(int(time.time() // 3600 * 3600))
DAYS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "world"
    from datetime import datetime, timezone

    start = datetime.fromtimestamp(NOW - DAYS * 86400, tz=timezone.utc).isoformat()
    r = CliRunner().invoke(cli, ["data", "synth", "--out", str(out), "--users", "2500", "--items", "800",
                                 "--days", str(DAYS), "--seed", "3", "--activity", "1.0", "--start", start, "--no-progress"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def model(world: Path) -> Path:
    out = world.parent / "model"
    r = CliRunner().invoke(cli, ["train", "--data", str(world), "--out", str(out), "--no-progress",
                                 "retrieval.epochs=4", "ranking.epochs=2"])
    assert r.exit_code == 0, r.output
    return out


def test_eval_json_has_every_metric_and_beats_popularity(world: Path, model: Path):
    r = CliRunner().invoke(cli, ["eval", "--data", str(world), "--model", str(model), "--json", "--oracle"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out["retrieval"]) >= {"recall@10", "recall@100", "ndcg@10"}
    assert set(out["ranking"]) >= {"auc", "gauc", "mrr", "ndcg@5", "ndcg@10"}
    assert out["split"]["train"]["ts_max"] < out["split"]["boundary_ts"] <= out["split"]["test"]["ts_min"]
    # learned models beat the popularity baselines, and the oracle bounds the ranker
    assert out["ranking"]["auc"] > out["baselines"]["ranking_popular"]["auc"] + 0.03
    assert out["retrieval"]["recall@100"] > out["baselines"]["retrieval_popular"]["recall@100"]
    assert out["oracle"]["ranking"]["auc"] >= out["ranking"]["auc"] - 0.02
    assert out["ranking"]["auc"] > 0.6


def test_serve_feed_events_and_planted_topic(world: Path, model: Path, tmp_path: Path):
    # the diversity cap is lifted so the test sees what the models learned
    app, event_log, rec, _ = build_service(str(model), str(tmp_path / "events"), overrides=("rerank.max_per_category=10",))
    art = rec.art
    try:
        with TestClient(app) as client:
            known = str(art.snapshot.user_ids[int(np.argmax(art.snapshot.user_clicks))])
            r = client.get("/v1/feed", params={"user_id": known, "k": 10})
            assert r.status_code == 200
            body = r.json()
            assert body["tier"] == "full" and len(body["items"]) == 10
            assert set(body["timings_ms"]) >= {"context", "retrieve", "enrich", "rank", "rerank", "total"}
            assert all(it["title"] and it["source"] in ("ann", "fresh", "popular", "explore") for it in body["items"])
            assert client.get("/v1/feed", params={"user_id": "nobody-yet", "k": 5}).status_code == 200
            assert client.get("/v1/feed", params={"user_id": known, "k": 0}).status_code == 422

            # a brand-new user clicks only one topic -> the feed follows that topic
            cats = art.catalog.categories
            topic = Counter(cats.tolist()).most_common(3)[-1][0]
            live = np.flatnonzero((cats == topic) & (art.catalog.published_at <= NOW) & (art.catalog.published_at > NOW - 2 * 86400))
            events = [{"event_id": f"planted-{i}", "ts": NOW - 60 + i, "user_id": "topic-fan", "item_id": str(art.catalog.item_ids[j]),
                       "kind": "click"} for i, j in enumerate(live[:8])]
            r = client.post("/v1/events", json={"events": events + [{"event_id": "bad", "ts": "yesterday", "user_id": "x",
                                                                      "item_id": "i1", "kind": "click"}]})
            assert r.status_code == 202
            assert r.json()["accepted"] == len(events) and len(r.json()["errors"]) == 1
            feed = client.get("/v1/feed", params={"user_id": "topic-fan", "k": 10}).json()
            share = sum(it["category"] == topic for it in feed["items"]) / len(feed["items"])
            base = float(np.mean(cats == topic))
            assert share >= 0.5, (topic, share, base, [it["category"] for it in feed["items"]])
            # accepted events are durable in the log
            ids = {rec_.event.event_id for rec_ in event_log.read()}
            assert {e["event_id"] for e in events} <= ids
            assert "feedrank_stage_latency_seconds" in client.get("/metrics").text
    finally:
        event_log.close()


def test_default_service_caps_categories(model: Path, tmp_path: Path):
    app, event_log, rec, cfg = build_service(str(model), str(tmp_path / "events"))
    assert cfg.rerank.max_per_category == 3
    try:
        with TestClient(app) as client:
            for user in rec.art.snapshot.user_ids[:20].tolist():
                feed = client.get("/v1/feed", params={"user_id": user, "k": 10}).json()
                counts = Counter(it["category"] for it in feed["items"])
                assert max(counts.values()) <= 3, counts
    finally:
        event_log.close()


def test_corrupt_bundle_is_refused(model: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(model, copy)
    p = copy / "ranker.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="ranker.pt: sha256 mismatch"):
        load_artifacts(copy)
