"""The report's numbers and parsing (the HTML end to end is in tests/integration/test_dashboard_browser.py)."""

from __future__ import annotations

import numpy as np

from feedrank.evaluation.report import _ctr_series, _serve_points, paired_bootstrap, plots, render_html


def _data(rng, n_req=300, k=10):
    groups = np.repeat(np.arange(n_req), k)
    good = rng.random(n_req * k)
    labels = (rng.random(n_req * k) < 0.05 + 0.2 * good).astype(float)
    return labels, groups, {"model": 0.05 + 0.2 * good, "noise": rng.random(n_req * k) * 0.3}


def test_paired_bootstrap_intervals_and_deltas():
    rng = np.random.default_rng(0)
    y, g, scores = _data(rng)
    out = paired_bootstrap(y, g, scores, np.ones(len(y)), reps=40, seed=1)
    assert set(out) == {"auc", "ndcg@10", "ece", "debiased_ndcg@10"}
    for m, vals in out.items():
        for n in ("model", "noise"):
            assert vals[n]["lo"] <= vals[n]["hi"]
    d = out["auc"]["delta:noise"]
    assert d["lo"] > 0 and d["value"] > 0.1  # the informative scorer is clearly better
    assert out["ece"]["model"]["value"] < out["ece"]["noise"]["value"]  # and calibrated


def test_simulation_and_serve_bench_shapes():
    assert _ctr_series({"days": [{"day": 0, "ctr": 0.1}, {"day": 1, "ctr": 0.2}]}) == {"x": [0, 1], "ctr": [0.1, 0.2]}
    assert _ctr_series({"ctr": [0.1, 0.2]})["x"] == [0, 1]
    assert _ctr_series([{"round": 3, "ctr": 0.1, "arm": "a"}])["arm"] == ["a"]
    assert _ctr_series({"nothing": 1}) is None
    serve = {"rates": [{"achieved_rps": 120.0, "p50_ms": 20.0, "p99_ms": 200.0, "bare_asgi": {"achieved_rps": 1, "p50_ms": 1, "p99_ms": 2}},
                       {"achieved_rps": 99.0, "p50_ms": 15.0, "p99_ms": 90.0}]}
    assert [p["achieved"] for p in _serve_points(serve)] == [99.0, 120.0]


def test_render_html_is_self_contained_with_partial_data():
    rng = np.random.default_rng(2)
    y, g, scores = _data(rng, n_req=50)
    data = {"model": {"dir": "m", "version": "v1"}, "baseline": {"version": "noise"}, "data_dir": "d", "n_test_impressions": len(y),
            "created_utc": "now", "metrics": paired_bootstrap(y, g, scores, None, reps=10), "scorers": list(scores),
            "bench": {"feed": None, "serve": None}, "simulation": None, "ope": None}
    assert set(plots(data)) == {"metrics", "deltas"}
    html = render_html(data)
    assert html.count("data:image/png;base64,") == 2
    assert "No simulation output found" in html and "http" not in html
