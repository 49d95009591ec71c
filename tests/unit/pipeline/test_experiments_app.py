"""A/B end to end on a live app: the arm is in every response and logged impression, the
arm's settings apply, and `feedrank ab report` reads the arms back from the event log."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from feedrank.cli.main import cli
from feedrank.serving.experiments import assign, parse_experiments
from feedrank.serving.factory import build_service

NOW = float(os.environ["FEEDRANK_TEST_NOW"])
EXPERIMENTS = {"experiments": [{"name": "caps", "salt": "t1", "traffic": 1.0, "arms": [
    {"name": "control", "weight": 0.5},
    {"name": "one-per-category", "weight": 0.5, "settings": {"rerank.max_per_category": 1, "rerank.explore_epsilon": 0.0}},
]}]}


def test_arms_served_logged_and_reported(model_dir: Path, tmp_path: Path):
    f = tmp_path / "experiments.yaml"
    f.write_text(yaml.safe_dump(EXPERIMENTS))
    app, log, rec, _ = build_service(str(model_dir), str(tmp_path / "events"), overrides=(f"serving.experiments_file={f}",))
    exps = parse_experiments(EXPERIMENTS)
    served: Counter[str] = Counter()
    try:
        with TestClient(app) as client:
            for i in range(60):
                user = f"user-{i}"
                body = client.get("/v1/feed", params={"user_id": user, "k": 8}).json()
                expected = "caps/" + assign(exps, user)[1].name
                assert body["arm"] == expected
                served[expected] += 1
                if expected == "caps/one-per-category":
                    assert max(Counter(it["category"] for it in body["items"]).values()) == 1
                if i % 3 == 0:  # some users click their first item
                    first = body["items"][0]
                    r = client.post("/v1/events", json={"events": [{"event_id": f"c{i}", "ts": NOW, "user_id": user,
                                                                    "item_id": first["item_id"], "kind": "click",
                                                                    "request_id": body["request_id"], "position": 0}]})
                    assert r.status_code == 202
            app.state.impression_writer.flush()
    finally:
        log.close()
    assert set(served) == {"caps/control", "caps/one-per-category"}
    r = CliRunner().invoke(cli, ["ab", "report", "--events", str(tmp_path / "events"), "--experiment", "caps", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    arms = {a["arm"]: a for a in rep["arms"]}
    assert rep["control"] == "caps/control"
    for name, n in served.items():
        assert arms[name]["requests"] == n and arms[name]["impressions"] == 8 * n
    assert sum(a["clicks"] for a in arms.values()) == 20
    assert arms["caps/one-per-category"]["vs_control"] is not None
