import json
from pathlib import Path

from click.testing import CliRunner

from feedrank.cli.main import cli
from feedrank.planning.capacity import PlanInputs, plan
from feedrank.planning.measured import Figure, Measured

MACHINE = {"cores": 2, "cpu": "Test CPU", "memory_gib": 24}


def _results(tmp: Path) -> Path:
    r = tmp / "results"
    r.mkdir()
    (r / "feed.json").write_text(json.dumps({"machine": MACHINE, "candidates": 500, "in_process": {"stages_ms": {
        "retrieve": {"p50": 1.0}, "enrich": {"p50": 0.5}, "rank": {"p50": 1.0}, "rerank": {"p50": 0.25}, "total": {"p50": 3.0}}}}))
    (r / "serve.json").write_text(json.dumps({"machine": MACHINE, "rates": [
        {"offered_rps": 100, "achieved_rps": 99.0, "p99_ms": 10.0, "tier_share": {"full": 1.0}, "non_2xx": 0},
        {"offered_rps": 300, "achieved_rps": 290.0, "p99_ms": 40.0, "tier_share": {"full": 0.995}, "non_2xx": 0},
        {"offered_rps": 600, "achieved_rps": 450.0, "p99_ms": 400.0, "tier_share": {"full": 0.6}, "non_2xx": 0}]}))
    return r


def test_plan_arithmetic_and_sources(tmp_path: Path):
    m = Measured.read(_results(tmp_path), slo_ms=50.0)
    lines = {ln.name: ln for ln in plan(PlanInputs(users=1e6, items=1e5, candidates=1000), m, Figure(250.0, "test", "any"))}
    assert lines["daily active users"].value == 5e5
    assert abs(lines["peak QPS"].value - 5e5 * 10 / 86400 * 3) < 1e-6
    node = lines["measured throughput of one serving node"]
    assert node.value == 290.0 and "rates[1]" in node.sources[0]          # the best rate within the SLO
    assert lines["serving nodes (whole pipeline per node)"].value == 1     # 173.6 / (290 x 0.6) -> 1
    assert lines["rank: CPU time per request"].value == 2.0                # 1 ms at 500 -> 2 ms at 1000 candidates
    assert lines["item vectors, raw float32"].value == 1e5 * 32 * 4 / 1024**3
    assert lines["item vectors, IVF-PQ codes"].value == 1e5 * 24 / 1024**3
    assert lines["impressions per day"].value == 5e6 * 20
    assert lines["two_tower: training nodes"].value is None                # not measured: said, not invented
    assert any("training examples/s" in s for s in m.missing)
    assert any("event ingest rate" in s for s in m.missing)


def test_plan_cli_prints_arithmetic_and_machine(tmp_path: Path):
    r = CliRunner().invoke(cli, ["plan", "--users", "1e9", "--items", "1e8", "--results", str(_results(tmp_path))])
    assert r.exit_code == 0, r.output
    assert "peak QPS" in r.output and "x peak_to_average 3.0" in r.output
    assert "measured on: 2 cores, Test CPU, 24 GiB" in r.output
    assert "not measured: event ingest rate" in r.output
    out = CliRunner().invoke(cli, ["plan", "--users", "1e6", "--items", "1e5", "--results", str(tmp_path / "results"), "--json"])
    doc = json.loads(out.output)
    assert doc["inputs"]["users"] == 1e6 and doc["lines"][0]["name"] == "daily active users"


def test_training_rate_comes_from_scale_json_when_no_model(tmp_path: Path):
    r = _results(tmp_path)
    (r / "scale.json").write_text(json.dumps({"machine": MACHINE, "points": [
        {"users": 10000, "items": 10000, "training": {"1": {"examples_per_s": 900.0}, "2": {"examples_per_s": 1600.0},
                                                      "speedup_2_vs_1": 1.78}},
        {"users": 100000, "items": 100000, "training": {"1": {"examples_per_s": 800.0}, "2": {"error": "killed"}}}]}))
    m = Measured.read(r, slo_ms=50.0)
    fig = m.train_examples_per_s["two_tower"]
    assert fig.value == 800.0 and "points[1].training.1.examples_per_s" in fig.source  # the largest world measured
    lines = {ln.name: ln for ln in plan(PlanInputs(users=1e6, items=1e5), m, Figure(250.0, "test", "any"))}
    assert lines["two_tower: training nodes"].value >= 1
    assert not any("training examples/s" in s for s in m.missing)
