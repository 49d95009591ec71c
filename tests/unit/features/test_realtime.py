"""Real-time counters, the log consumer (offsets, resume without double counting) and
feature validation."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from feedrank.data.eventlog import EventLog
from feedrank.features.consumer import LogConsumer
from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.validation import FeatureSpec, FeatureValidator, learn_specs
from feedrank.types import Event, EventKind

T0 = 1_700_000_000.0


def ev(i: int, kind: str, item: str, ts: float, user: str = "u1") -> Event:
    return Event(event_id=f"e{i}", ts=ts, user_id=user, item_id=item, kind=EventKind(kind))


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_windows_ctr_trending_and_sliding():
    rt = RealtimeFeatures(prior_ctr=0.1, prior_weight=10.0)
    events = [ev(i, "impression", "a", T0 - 7200 + i) for i in range(100)]          # 2 h ago
    events += [ev(100 + i, "impression", "a", T0 - 60 + i) for i in range(10)]      # last minute
    events += [ev(200 + i, "click", "a", T0 - 30 + i) for i in range(5)]
    events += [ev(300, "impression", "b", T0 - 10)]
    assert rt.apply(events) == len(events)
    f = rt.item_features(["a", "b", "zz"], now=T0)
    assert f.source == "stream" and f.windows == (300, 3600, 86400)
    np.testing.assert_allclose(f.impressions[0], [15, 15, 115])   # clicks count as shown too
    np.testing.assert_allclose(f.clicks[0], [5, 5, 5])
    np.testing.assert_allclose(f.impressions[1], [1, 1, 1])
    np.testing.assert_allclose(f.impressions[2], [0, 0, 0])
    np.testing.assert_allclose(f.ctr[0, 0], (5 + 1.0) / (15 + 10.0))
    np.testing.assert_allclose(f.ctr[2], [0.1, 0.1, 0.1])          # unknown item: the prior
    assert f.trending[0] > 0 and f.trending[2] == 0
    later = rt.item_features(["a"], now=T0 + 3600 + 400)
    np.testing.assert_allclose(later.impressions[0], [0, 0, 115])


def test_late_events_and_duplicates():
    rt = RealtimeFeatures(windows=(300,))
    rt.apply([ev(1, "impression", "a", T0)])
    rt.apply([ev(2, "impression", "a", T0 - 1000)])   # older than the 5 min ring holds
    rt.apply([ev(1, "impression", "a", T0)])          # redelivered id
    assert rt.counts(["a"], T0)[0][0, 0] == 1
    s = rt.stats()
    assert s["late"] == 1 and s["duplicates"] == 1 and s["applied"] == 2


def test_users_recent_clicks_and_affinity_bounded():
    cats = {"s1": "sports", "s2": "sports", "p1": "politics"}
    rt = RealtimeFeatures(item_category=cats, history_len=2, max_users=2, affinity_half_life_s=3600)
    rt.apply([ev(1, "click", "s1", T0), ev(2, "click", "s2", T0), ev(3, "click", "p1", T0 + 3600)])
    u = rt.user_features("u1", now=T0 + 3600)
    assert u.known and u.n_clicks == 3 and u.recent_clicks == ("s2", "p1")
    # sports decayed by one half-life: 2 * 0.5 = 1 vs politics 1
    assert u.category_affinity == pytest.approx({"sports": 0.5, "politics": 0.5})
    rt.apply([ev(10, "click", "s1", T0, user="u2"), ev(11, "click", "s1", T0, user="u3")])
    assert not rt.user_features("u1", now=T0).known and rt.stats()["users"] == 2


def test_item_memory_is_bounded():
    rt = RealtimeFeatures(windows=(3600,), max_items=50)
    rt.apply([ev(i, "impression", f"i{i}", T0 + i) for i in range(500)])
    s = rt.stats()
    assert s["item_capacity"] == 50 and s["items"] <= 50 and s["evicted_items"] > 0
    assert rt.counts(["i499"], T0 + 500)[0][0, 0] == 1  # the newest survive
    assert rt.counts(["i0"], T0 + 500)[0][0, 0] == 0


def test_stalled_stream_falls_back_to_baselines():
    clock = Clock(1000.0)
    rt = RealtimeFeatures(stall_s=30, clock=clock)
    rt.load_baseline(["a"], impressions_per_day=[8640.0], clicks_per_day=[864.0])
    assert rt.item_features(["a"], now=T0).source == "baseline"  # nothing streamed yet
    rt.apply([ev(1, "impression", "a", T0)])
    assert rt.item_features(["a"], now=T0).source == "stream"
    clock.t += 31
    f = rt.item_features(["a"], now=T0)
    assert f.source == "baseline"
    np.testing.assert_allclose(f.impressions[0], [30.0, 360.0, 8640.0])
    np.testing.assert_allclose(f.clicks[0], [3.0, 36.0, 864.0])
    rt.heartbeat()
    assert rt.item_features(["a"], now=T0).source == "stream"


def _log_with(tmp_path: Path, n: int, start: int = 0) -> EventLog:
    log = EventLog(tmp_path / "events", segment_bytes=4096)  # small segments: offsets cross files
    log.append([ev(start + i, "click" if i % 4 == 0 else "impression", f"i{i % 7}", T0 + i) for i in range(n)])
    return log


def test_consumer_resumes_without_double_counting(tmp_path: Path):
    log = _log_with(tmp_path, 300)
    ckpt = tmp_path / "ckpt" / "rt.npz"
    rt = RealtimeFeatures()
    c = LogConsumer(log, rt, ckpt, batch_size=64, commit_every_s=1e9)
    assert c.poll(max_events=120) == 120
    c.commit()
    assert c.poll() == 180            # applied but never committed: lost in the "crash"
    total = rt.counts([f"i{k}" for k in range(7)], T0 + 400)[0][:, 2].sum()
    assert total == 300
    del c, rt                          # crash
    log.append([ev(1000 + i, "impression", "i0", T0 + 300 + i) for i in range(50)])
    rt2 = RealtimeFeatures()
    c2 = LogConsumer(log, rt2, ckpt)
    assert c2.offset == c2.committed and c2.applied == 0
    assert c2.poll() == 230            # from the committed offset: the 180 again, then 50 new
    imps = rt2.counts([f"i{k}" for k in range(7)], T0 + 400)[0][:, 2]
    assert imps.sum() == 350           # every event exactly once
    assert rt2.stats()["applied"] == 350 and rt2.stats()["duplicates"] == 0
    c2.stop()
    assert LogConsumer(log, RealtimeFeatures(), ckpt).offset == c2.offset
    log.close()


def test_consumer_thread_tails_the_log(tmp_path: Path):
    log = _log_with(tmp_path, 10)
    rt = RealtimeFeatures()
    c = LogConsumer(log, rt, None).start(interval_s=0.01)
    try:
        log.append([ev(100, "click", "new", T0 + 50)])
        import time

        deadline = time.monotonic() + 5
        while rt.counts(["new"], T0 + 60)[1][0, 0] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.counts(["new"], T0 + 60)[1][0, 0] == 1
    finally:
        c.stop()
        log.close()


def test_validator_replaces_counts_and_logs(caplog: pytest.LogCaptureFixture):
    specs = {"ctr": FeatureSpec("ctr", 0.0, 1.0, 0.05), "imps": FeatureSpec("imps", 0.0, 1e6, 0.0)}
    v = FeatureValidator(specs, ttl_s=60)
    with caplog.at_level(logging.WARNING):
        out = v.check_record("item:n1", {"ctr": float("nan"), "imps": "12"}, ts=T0, now=T0)
    assert out == {"ctr": 0.05, "imps": 0.0}
    assert "item:n1" in caplog.text and "nan" in caplog.text
    assert v.check_record("item:n2", {"ctr": 0.2, "imps": 3}, ts=T0, now=T0) == {"ctr": 0.2, "imps": 3.0}
    assert v.check_record("item:n3", {"ctr": 0.2, "imps": 3}, ts=T0, now=T0 + 61) == {"ctr": 0.05, "imps": 0.0}
    assert v.check_value("item:n4", "ctr", 7.0) == 0.05
    cols = v.check_columns(["a", "b", "c"], ["ctr", "imps"], np.array([[0.1, 1.0], [2.0, np.inf], [0.3, 5.0]]),
                           ts=np.array([T0, T0, T0 - 100]), now=T0)
    np.testing.assert_allclose(cols, [[0.1, 1.0], [0.05, 0.0], [0.05, 0.0]])
    c = v.counts()
    assert c[("ctr", "nan")] == 1 and c[("imps", "wrong_type")] == 1 and c[("ctr", "out_of_range")] == 2
    assert c[("imps", "nan")] == 1 and c[("ctr", "stale")] == 2


def test_learn_specs_from_training_columns():
    specs = learn_specs({"ctr": np.array([0.0, 0.1, 0.2, np.nan]), "delta": np.array([-1.0, 1.0])})
    assert specs["ctr"].lo == 0.0 and specs["ctr"].hi == pytest.approx(0.3) and specs["ctr"].default == 0.1
    assert specs["delta"].lo < -1.0 and math.isfinite(specs["delta"].hi)
    assert FeatureSpec.from_json(specs["ctr"].to_json()) == specs["ctr"]
