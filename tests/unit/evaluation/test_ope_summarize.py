"""`feedrank ope summarize`: pooling coverage-check outputs, and the coverage summary itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from feedrank.cli.main import cli
from feedrank.evaluation.ope_synth import coverage_interval, summarize


def _run(seed: int, value: float, truth: float = 0.2, half: float = 0.02) -> dict:
    iv = {m: {"lo": value - half, "hi": value + half, "covers": abs(value - truth) <= half} for m in ("el", "hall", "normal")}
    est = {"value": value, "lo": value - half, "hi": value + half, "stderr": half / 1.645,
           "covers": abs(value - truth) <= half, "covers_logged_sessions": True, "intervals": iv}
    return {"seed": seed, "truth": truth, "estimates": {"ips": est}}


def _file(tmp_path, name: str, seeds: range, values: np.ndarray) -> str:
    out = {"level": 0.9, "sample": 0.5, "world": {"n_users": 10}, "policy": {"beta": 1.0, "noise": 0.5},
           "runs": [_run(s, float(v)) for s, v in zip(seeds, values)]}
    path = tmp_path / name
    path.write_text(json.dumps(out))
    return str(path)


def test_summarize_pools_runs_and_reports_the_coverage_range(tmp_path):
    a = _file(tmp_path, "a.json", range(0, 10), np.r_[np.full(9, 0.2), 0.3])  # 9 of 10 cover
    b = _file(tmp_path, "b.json", range(10, 20), np.full(10, 0.21))  # 10 of 10
    r = CliRunner().invoke(cli, ["ope", "summarize", a, b, "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["n_runs"] == 20
    ips = s["summary"]["ips"]
    assert ips["covered"] == 19 and ips["coverage"] == pytest.approx(0.95)
    el = ips["coverage_by_method"]["el"]
    assert el["coverage"] == pytest.approx(0.95)
    assert (el["below"], el["above"]) == (1, 0)  # the run at 0.3 has its interval above the truth
    assert el["mean_rel_width"] == pytest.approx(0.04 / 0.2)
    lo, hi = ips["coverage_ci95"]
    assert lo < 0.95 < hi and (lo, hi) == pytest.approx(coverage_interval(19, 20))
    text = CliRunner().invoke(cli, ["ope", "summarize", a, b])
    assert "19/20" in text.output


def test_summarize_refuses_overlapping_seeds_or_different_settings(tmp_path):
    a = _file(tmp_path, "a.json", range(0, 5), np.full(5, 0.2))
    r = CliRunner().invoke(cli, ["ope", "summarize", a, a])
    assert r.exit_code != 0 and "seed 0" in str(r.exception)
    other = json.loads(open(a).read())
    other["level"] = 0.95
    for run in other["runs"]:
        run["seed"] += 100
    (tmp_path / "c.json").write_text(json.dumps(other))
    r = CliRunner().invoke(cli, ["ope", "summarize", a, str(tmp_path / "c.json")])
    assert r.exit_code != 0 and "different settings" in str(r.exception)


def test_coverage_interval_is_clopper_pearson():
    lo, hi = coverage_interval(44, 50)
    assert lo == pytest.approx(0.7569, abs=1e-3) and hi == pytest.approx(0.9547, abs=1e-3)
    assert coverage_interval(0, 10)[0] == 0.0 and coverage_interval(10, 10)[1] == 1.0
    assert summarize([_run(0, 0.2)])["ips"]["coverage"] == 1.0


def test_summarize_out_joins_chunks_and_main_interval_rekeys(tmp_path):
    from feedrank.evaluation.ope_synth import with_main_interval

    a = _file(tmp_path, "a.json", range(0, 5), np.full(5, 0.2))
    b = _file(tmp_path, "b.json", range(5, 10), np.r_[np.full(4, 0.2), 0.3])
    joined = tmp_path / "joined.json"
    r = CliRunner().invoke(cli, ["ope", "summarize", b, a, "--out", str(joined)])
    assert r.exit_code == 0, r.output
    j = json.loads(joined.read_text())
    assert [x["seed"] for x in j["runs"]] == list(range(10)) and j["summary"]["ips"]["covered"] == 9
    # another recorded interval as the main one: here "hall" is made to cover every run
    for run in j["runs"]:
        run["estimates"]["ips"]["intervals"]["hall"] = {"lo": 0.0, "hi": 1.0, "covers": True}
    run_0 = j["runs"][0]["estimates"]["ips"]
    re = with_main_interval({**j, "command": "feedrank ope check --seeds 10 --interval el --out x.json"}, "hall")
    assert re["method"] == "hall" and re["summary"]["ips"]["covered"] == 10
    assert re["runs"][9]["estimates"]["ips"]["lo"] == 0.0 and re["runs"][9]["estimates"]["ips"]["method"] == "hall"
    assert re["command"] == "feedrank ope check --seeds 10 --interval hall --out x.json"
    assert j["runs"][0]["estimates"]["ips"] is run_0 and run_0["lo"] != 0.0  # the input is not modified
    with pytest.raises(Exception, match="no recorded 'boot-t' interval"):
        with_main_interval(j, "boot-t")
