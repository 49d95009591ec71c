"""The evaluation report and the web dashboard, end to end on a tiny world.

`feedrank report` writes one self-contained HTML file; `feedrank serve`'s /dashboard is
loaded in real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium): the feed renders for a user, the live figures update under traffic, and a
screenshot is written to ``$FEEDRANK_TEST_OUTPUT`` (default ``var/test-output/``).

`make test` installs Chromium and its driver when missing (the ``browser`` target). Without
them the browser test is skipped locally and fails when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from feedrank.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
NOW = float(int(time.time() // 3600 * 3600))
DAYS = 3
API_KEY = "dash-test-key"


@pytest.fixture(scope="module")
def world_model(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dash")
    start = datetime.fromtimestamp(NOW - DAYS * 86400, tz=timezone.utc).isoformat()
    r = CliRunner().invoke(cli, ["data", "synth", "--out", str(root / "world"), "--users", "1500", "--items", "400",
                                 "--days", str(DAYS), "--seed", "5", "--activity", "1.0", "--start", start, "--no-progress"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["train", "--data", str(root / "world"), "--out", str(root / "model"), "--no-progress",
                                 "--no-eval", "retrieval.epochs=1", "ranking.epochs=1"])
    assert r.exit_code == 0, r.output
    return root / "world", root / "model"


@pytest.fixture(scope="module")
def report(world_model, tmp_path_factory) -> Path:
    world, model = world_model
    bench = tmp_path_factory.mktemp("bench")
    # a bench result and a simulation output in the shapes the report reads
    (bench / "feed.json").write_text(json.dumps({"created_utc": "test", "in_process": {"stages_ms": {
        "retrieve": {"p50": 1.2, "p90": 1.6, "p99": 2.1}, "rank": {"p50": 0.4, "p90": 0.5, "p99": 0.7}}}}))
    (bench / "simulate.json").write_text(json.dumps({"days": [{"day": d, "ctr": 0.01 + 0.001 * d} for d in range(5)]}))
    out = world.parent / "report.html"
    r = CliRunner().invoke(cli, ["report", "--model", str(model), "--data", str(world), "--out", str(out),
                                 "--bench-dir", str(bench), "--users", "60", "--bootstrap", "20", "--max-impressions", "20000"])
    assert r.exit_code == 0, r.output
    return out


def test_report_is_one_self_contained_html_file(report: Path):
    text = report.read_text()
    assert text.startswith("<!doctype html>")
    # plots are embedded PNGs; nothing is fetched from elsewhere
    pngs = re.findall(r'src="data:image/png;base64,', text)
    assert len(pngs) >= 5, len(pngs)  # metrics, deltas, calibration, Lorenz, latency, CTR over time
    assert not re.search(r'(src|href)="(https?:)?//', text)
    for heading in ("Ranking metrics and deltas", "Segments", "What is served", "Latency", "CTR over time"):
        assert heading in text
    summary = json.loads(report.with_suffix(".json").read_text())
    auc = summary["metrics"]["auc"]
    model_name, base_name = summary["scorers"]
    assert auc[model_name]["lo"] <= auc[model_name]["value"] <= auc[model_name]["hi"]
    assert f"delta:{base_name}" in auc
    served = summary["model"]["beyond"]["served"]
    assert 0 < served["catalog_coverage"] <= 1 and 0 <= served["intra_list_diversity"] <= 1
    assert 0 <= served["creator_exposure_gini"] < 1 and served["n_items_served"] > 0
    segs = summary["model"]["beyond"]["accuracy"]["segments"]
    assert set(segs) >= {"users_new", "users_heavy", "items_cold"}
    theta = summary["model"]["beyond"]["accuracy"]["click_model"]["theta"]
    assert theta[0] == 1.0 and theta[-1] < theta[0]


@pytest.fixture(scope="module")
def server(world_model, report):
    from feedrank.serving.factory import build_service
    from feedrank.serving.server import BackgroundServer, free_port

    world, model = world_model
    app, event_log, rec, _ = build_service(str(model), str(world.parent / "events"), overrides=(f"serving.api_key={API_KEY}",))
    srv = BackgroundServer(app, "127.0.0.1", free_port()).start()
    yield srv
    srv.stop()
    event_log.close()


def _user(model: Path) -> str:
    from feedrank.pipeline.artifacts import load_artifacts

    art = load_artifacts(model, verify=False)
    snap = art.snapshot
    return str(snap.user_ids[int(snap.user_clicks.argmax())])


def test_dashboard_api(server, world_model):
    _, model = world_model
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = c.get("/dashboard/api/feed", params={"user_id": _user(model), "k": 10}).json()
        assert len(body["items"]) == 10 and all(it["source"] for it in body["items"])
        # a loaded CI box may answer from the fallback tier (no ranker): nothing is ranked then
        assert body["funnel"]["shown"] == 10
        assert body["funnel"]["ranked"] >= 10 or body["tier"] == "fallback", body["tier"]
        assert sum(v for k, v in body["funnel"].items() if k.startswith("source:")) >= body["funnel"]["ranked"]
        assert any(it["explain"] for it in body["items"])
        assert c.get("/dashboard/api/report").json()["available"] is True
        assert c.get("/dashboard/report").text.startswith("<!doctype html>")
        assert c.get("/dashboard/api/models").json()["serving"] == body["model_version"]
        # a preview is not an impression: nothing was logged for it
        assert c.get("/dashboard/api/live").json()["feeds_total"] == 0
        # the admin action needs the key
        assert c.post("/dashboard/api/admin/report", json={"path": "x.html"}).status_code == 401
        r = c.post("/dashboard/api/admin/report", json={"path": "nope.html"}, headers={"x-api-key": API_KEY})
        assert r.status_code == 422


def _browser():
    selenium = pytest.importorskip("selenium", reason="selenium (a dev dependency) is not installed")
    del selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        msg = "Debian's chromium and chromium-driver are not installed (`make browser` installs them)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_dashboard_in_headless_chromium(server, world_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, model = world_model
    user = _user(model)
    browser = _browser()
    out_dir = Path(os.environ.get("FEEDRANK_TEST_OUTPUT", REPO / "var" / "test-output"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(f"{server.url}/dashboard")
        wait.until(lambda b: b.find_element(By.ID, "model-version").text not in ("", "…"))
        # the feed renders for a user
        box = browser.find_element(By.ID, "user-id")
        box.clear()
        box.send_keys(user)
        browser.find_element(By.ID, "feed-go").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#feed tr.feed-item")) == 10)
        rows = browser.find_elements(By.CSS_SELECTOR, "#feed tr.feed-item")
        assert all(r.find_element(By.CSS_SELECTOR, ".src").text for r in rows)
        assert "shown" in browser.find_element(By.ID, "funnel").text
        assert "retrieve" in browser.find_element(By.ID, "stages").text
        # live figures update under traffic
        before = int(browser.find_element(By.ID, "live-updated").get_attribute("data-count"))
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(12):
                assert c.get("/v1/feed", params={"user_id": f"u{i}", "k": 5}).status_code == 200
        wait.until(lambda b: b.find_element(By.ID, "live-feeds").text not in ("–", "0", "n/a")
                   and int(b.find_element(By.ID, "live-feeds").text) >= 12)
        wait.until(lambda b: int(b.find_element(By.ID, "live-updated").get_attribute("data-count")) >= before + 2)
        assert "full" in browser.find_element(By.ID, "live-tiers").text
        assert browser.find_element(By.ID, "live-p50").text.endswith("ms")
        # the last evaluation report is linked
        wait.until(lambda b: b.find_elements(By.ID, "report-link"))
        shot = out_dir / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"dashboard screenshot: {shot}")
    finally:
        browser.quit()
