from __future__ import annotations

import numpy as np
import pytest

from feedrank.evaluation.abreport import ab_report, ratio_stats
from feedrank.types import Event, EventKind


def _events(arm: str, ctr: float, requests: int, rng: np.random.Generator, per_req: int = 10):
    out = []
    for r in range(requests):
        rid = f"{arm}-{r}"
        user = f"{arm}-user-{r % (requests // 3)}"
        for p in range(per_req):
            out.append(Event(f"{rid}:{p}", 1.0, user, f"i{p}", EventKind.IMPRESSION, position=p, request_id=rid, arm=arm))
            if rng.random() < ctr:
                out.append(Event(f"{rid}:{p}:c", 2.0, user, f"i{p}", EventKind.CLICK, request_id=rid))
                out.append(Event(f"{rid}:{p}:c2", 2.5, user, f"i{p}", EventKind.CLICK, request_id=rid))  # double click
                out.append(Event(f"{rid}:{p}:d", 3.0, user, f"i{p}", EventKind.DWELL, request_id=rid, dwell_ms=1000 + 100 * p))
    return out


def test_detects_a_real_difference_and_covers_the_truth():
    rng = np.random.default_rng(0)
    ev = _events("exp/control", 0.05, 3000, rng) + _events("exp/treat", 0.08, 3000, rng)
    ev.append(Event("orphan", 1.0, "x", "i1", EventKind.CLICK, request_id="no-such-request"))
    rep = ab_report(ev, "exp")
    arms = {a["arm"]: a for a in rep["arms"]}
    assert rep["control"] == "exp/control"
    c, t = arms["exp/control"], arms["exp/treat"]
    assert c["impressions"] == 30_000 and c["requests"] == 3000 and c["users"] == 1000
    assert c["ctr_ci95"][0] < 0.05 < c["ctr_ci95"][1]
    assert t["ctr_ci95"][0] < 0.08 < t["ctr_ci95"][1]
    vs = t["vs_control"]
    assert vs["p_value"] < 1e-6 and vs["diff_ci95_low"] < 0.03 < vs["diff_ci95_high"]
    assert c["dwell_ms_mean"] is not None and c["dwell_events"] == c["clicks"]


def test_a_a_test_is_rarely_significant():
    significant = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        rep = ab_report(_events("aa/control", 0.06, 400, rng) + _events("aa/other", 0.06, 400, rng), "aa")
        other = next(a for a in rep["arms"] if a["arm"] == "aa/other")
        significant += other["vs_control"]["p_value"] < 0.05
    assert significant <= 6  # about 2 expected at a 5% level


def test_delta_method_matches_a_bootstrap():
    rng = np.random.default_rng(3)
    n = rng.integers(5, 15, size=2000).astype(float)
    c = rng.binomial(n.astype(int), 0.07).astype(float)
    r, v = ratio_stats(c, n)
    boots = []
    for _ in range(400):
        idx = rng.integers(0, len(n), len(n))
        boots.append(c[idx].sum() / n[idx].sum())
    assert abs(np.sqrt(v) / np.std(boots) - 1) < 0.2
    assert abs(r - c.sum() / n.sum()) < 1e-12


def test_online_metrics_sessions_return_rate_dwell_and_creator_reach():
    def imp(eid, ts, user, item, rid):
        return Event(eid, ts, user, item, EventKind.IMPRESSION, position=0, request_id=rid, arm="x/control")

    ev = [
        # user a: two feeds 5 min apart (one session), then one a day later (a second session)
        imp("1", 0.0, "a", "i1", "r1"), imp("2", 300.0, "a", "i2", "r2"),
        Event("3", 310.0, "a", "i2", EventKind.CLICK, request_id="r2"),
        Event("4", 340.0, "a", "i2", EventKind.DWELL, request_id="r2", dwell_ms=30_000),
        imp("5", 86_400.0, "a", "i3", "r3"),
        # user b: one feed, never returns
        imp("6", 100.0, "b", "i1", "r4"),
    ]
    creators = {"i1": "c1", "i2": "c2", "i3": "c2"}
    rep = ab_report(ev, "x", creator_of=creators)
    on = rep["arms"][0]["online"]
    assert on["sessions"] == 3
    assert on["requests_per_session"] == pytest.approx(4 / 3)
    assert on["return_rate"] == pytest.approx(0.5)
    assert on["dwell_s_per_session"] == pytest.approx(10.0)
    assert on["session_minutes"] == pytest.approx(340.0 / 60 / 3)
    assert on["creators_reached"] == 2 and on["creators_clicked"] == 1 and on["items_reached"] == 3
