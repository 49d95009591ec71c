"""Live features in the request path: publishing from the stream, guarded reads, planted
corrupt values replaced and counted, stall -> baselines, slow/broken store -> defaults."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from feedrank.features.live import STREAM_KEY, LiveFeatures, ReadGuard, item_hash, worst
from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.store.factory import open_store
from feedrank.pipeline.artifacts import OnlineSnapshot
from feedrank.types import Event, EventKind

T0 = 1_767_225_600.0
IDS = [f"n{i}" for i in range(10)]


def _snapshot() -> OnlineSnapshot:
    return OnlineSnapshot(user_ids=np.array(["u0"]), histories=np.array([[-1, 3, 4]]), user_clicks=np.array([2]),
                          item_impressions=np.full(10, 100.0), item_clicks=np.full(10, 5.0))


def _live(store, clock=lambda: T0, **kw) -> LiveFeatures:
    rt = RealtimeFeatures((300, 3600, 86400), history_len=3, clock=clock)
    live = LiveFeatures(store, rt, history_len=3, clock=clock, **kw)
    live.heartbeat_check_s = 0.0  # read the stream heartbeat on every call (tests move the clock)
    return live


def _ev(i: int, kind: str, item: str, user: str = "u1", ts: float = T0) -> Event:
    return Event(f"e{i}", ts, user, item, EventKind(kind), 0, f"r{i}", 1.0)


def test_publish_then_read_items_and_user():
    live = _live(open_store("memory://"))
    b = live.bind(_snapshot(), IDS, ["a", "b"] * 5)
    evs = [_ev(i, "impression", "n1") for i in range(30)] + [_ev(100 + i, "click", "n1") for i in range(4)]
    evs += [_ev(200, "click", "n2", user="u0")]
    live.publisher.apply(evs)
    live.publisher.heartbeat()
    got = live.read_items(["n1", "n2", "n9"], T0, np.zeros(3), np.zeros(3))
    assert got.status == "live" and got.replaced == 0
    assert got.impressions.tolist() == [34.0, 1.0, 0.0]  # a click counts as an impression
    assert got.clicks.tolist() == [4.0, 1.0, 0.0]
    user, status = live.read_user("u1", T0, b)
    assert status == "live" and user.n_clicks == 4
    assert b.rows(user.recent_hashes) == [1, 1, 1]           # history_len 3
    assert user.category_affinity == {"b": 1.0}
    # a snapshot user continues from the bundle: 2 clicks + 1 streamed, history n3 n4 + n2
    u0, _ = live.read_user("u0", T0, b)
    assert u0.n_clicks == 3 and b.rows(u0.recent_hashes) == [3, 4, 2]
    # the fallback (in-process counters) fills items without a record
    got = live.read_items(["n9"], T0, np.array([7.0]), np.array([2.0]))
    assert got.impressions.tolist() == [7.0] and got.clicks.tolist() == [2.0]


@pytest.mark.parametrize("url_kind", ["memory", "redis"])
def test_planted_corrupt_values_are_replaced_counted_and_logged(url_kind, request, caplog):
    url = "memory://" if url_kind == "memory" else request.getfixturevalue("redis_server") + "/0?prefix=corrupt:"
    store = open_store(url, ttl_s=2 * 86400.0)
    live = _live(store, ttl_s=86400.0)
    live.bind(_snapshot(), IDS, ["a"] * 10)
    live.publisher.heartbeat()
    good = {"imps_86400": 50.0, "clicks_86400": 3.0, "trending": 0.1}
    store.put_items({"n0": good, "n1": {**good, "imps_86400": float("nan")}, "n2": {**good, "clicks_86400": 1e12},
                     "n3": {**good, "imps_86400": -4.0}}, ts=T0)
    store.put_items({"n4": good}, ts=T0 - 1.5 * 86400)   # stale beyond the validator's TTL, still in the store
    if url_kind == "redis":  # a wrong type, written behind the store's back
        store._r.hset("corrupt:i:n5", mapping={"imps_86400": "garbage", "clicks_86400": "2", "\x00ts": repr(T0)})
    fb_imps, fb_clicks = np.full(6, 11.0), np.full(6, 1.0)
    with caplog.at_level("WARNING", logger="feedrank.features.validation"):
        got = live.read_items(IDS[:6], T0, fb_imps, fb_clicks)
    assert got.status == "live"
    assert got.impressions[0] == 50.0 and got.clicks[0] == 3.0
    assert got.impressions[1] == 11.0                      # NaN -> fallback
    assert got.clicks[2] == 1.0                            # out of range -> fallback
    assert got.impressions[3] == 11.0                      # negative -> fallback
    assert got.impressions[4] == 11.0 and got.clicks[4] == 1.0   # stale -> fallback
    counts = live.validator.counts()
    assert counts[("imps_86400", "nan")] == 1
    assert counts[("clicks_86400", "out_of_range")] == 1
    assert counts[("imps_86400", "out_of_range")] == 1
    assert counts[("imps_86400", "stale")] == 1
    if url_kind == "redis":
        assert got.impressions[5] == 11.0 and got.clicks[5] == 2.0
        assert counts[("imps_86400", "wrong_type")] == 1
    assert any("n1" in r.getMessage() and "nan" in r.getMessage() for r in caplog.records)
    assert live.stats()["invalid"]["imps_86400/nan"] == 1
    store.close()


def test_stalled_stream_serves_batch_baselines():
    wall = [T0]
    live = _live(open_store("memory://"), clock=lambda: wall[0], stall_s=30.0)
    live.bind(_snapshot(), IDS, ["a"] * 10)
    live.load_baselines(["n1", "n2"], [240.0, 48.0], [24.0, 0.0])
    live.publisher.apply([_ev(1, "click", "n1")])
    live.publisher.heartbeat()
    assert live.read_items(["n1"], T0, np.zeros(1), np.zeros(1)).status == "live"
    wall[0] = T0 + 31.0                                     # no consumer progress for > stall_s
    got = live.read_items(["n1", "n2", "n3"], T0 + 31.0, np.full(3, 5.0), np.zeros(3))
    assert got.status == "baseline"
    assert got.impressions.tolist() == [240.0, 48.0, 5.0]   # per day x (86400 s / 1 day); no baseline: fallback
    assert got.clicks.tolist() == [24.0, 0.0, 0.0]
    live.publisher.heartbeat()                              # the stream is back
    assert live.read_items(["n1"], T0 + 31.0, np.zeros(1), np.zeros(1)).status == "live"


class _SlowStore:
    """A store whose reads hang (``slow``) or raise (``broken``)."""

    url = "slow://"

    def __init__(self) -> None:
        self.slow = threading.Event()
        self.broken = False
        self.inner = open_store("memory://")

    def get_items(self, *a):
        if self.broken:
            raise ConnectionError("store down")
        if self.slow.is_set():
            time.sleep(1.0)
        return self.inner.get_items(*a)

    def get_user(self, *a):
        return self.get_items and self.inner.get_user(*a)

    def put_items(self, *a, **k):
        return self.inner.put_items(*a, **k)


def test_slow_or_broken_store_means_defaults_then_recovery():
    store = _SlowStore()
    live = _live(store, read_timeout_s=0.05)
    live.guard.cooloff_s = 0.05
    live.bind(_snapshot(), IDS, ["a"] * 10)
    live.publisher.heartbeat()
    fb = np.array([3.0])
    assert live.read_items(["n1"], T0, fb, fb).status == "live"
    store.slow.set()
    t = time.monotonic()
    for _ in range(10):
        got = live.read_items(["n1"], T0, fb, fb)
        assert got.status == "default" and got.impressions.tolist() == [3.0]
    assert time.monotonic() - t < 5.0      # unguarded: 10 x 1 s; each call is bounded by the budget or skipped
    store.slow.clear()
    store.broken = True
    time.sleep(0.1)
    assert live.read_items(["n1"], T0, fb, fb).status == "default"
    store.broken = False
    deadline = time.monotonic() + 5.0
    while live.read_items(["n1"], T0, fb, fb).status != "live":
        assert time.monotonic() < deadline, "no recovery after the store came back"
        time.sleep(0.02)
    s = live.stats()["reads"]
    assert s["timeout"] >= 1 and s["error"] >= 1 and s["open"] >= 1
    live.stop()


def test_guard_inline_and_helpers():
    g = ReadGuard(0.01, inline=True)
    assert g.call(lambda x: x + 1, 1) == (2, "ok")
    assert g.call(lambda: 1 / 0) == (None, "error")
    assert g.call(lambda: 1) == (None, "open")       # breaker open for the cool-off
    assert worst("live", "default", "baseline") == "default"
    h = item_hash("n1")
    assert h == item_hash("n1") and h < 2**48 and float(int(h)) == h
    assert STREAM_KEY not in IDS


def test_features_load_cli_writes_daily_baselines(tmp_path):
    import json

    from click.testing import CliRunner

    from feedrank.cli.main import cli
    from feedrank.features.offline import write_event_partitions

    # 2 days: n1 shown 4 + 2 times, clicked 1 + 1 times; n2 shown once on day 2
    evs = [_ev(i, "impression", "n1", ts=T0 + i) for i in range(4)] + [_ev(10, "click", "n1", ts=T0 + 10)]
    evs += [_ev(20 + i, "impression", "n1", ts=T0 + 86400 + i) for i in range(2)] + [_ev(30, "click", "n1", ts=T0 + 86401)]
    evs += [_ev(40, "impression", "n2", ts=T0 + 86402)]
    write_event_partitions(evs, tmp_path / "events", "p0")
    url = f"sqlite:///{tmp_path}/f.db"
    r = CliRunner().invoke(cli, ["features", "load", "--store", url, "--parquet", str(tmp_path / "events"), "--days", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["items"] == 2
    store = open_store(url)
    got = store.get_items(["n1", "n2"], ["base_imps_day", "base_clicks_day"], now=T0 + 2 * 86400)
    assert got.values.tolist() == [[3.0, 1.0], [0.5, 0.0]]     # per day over 2 days (impressions only)
    store.close()
    bad = CliRunner().invoke(cli, ["features", "load", "--store", "memory://", "--parquet", str(tmp_path / "events")])
    assert bad.exit_code != 0 and "memory://" in bad.output


def test_unusable_checkpoint_is_set_aside_and_the_log_consumed_again(tmp_path):
    from feedrank.data.eventlog import EventLog

    log = EventLog(tmp_path / "events")
    log.append([_ev(i, "click", "n1") for i in range(3)])
    ckpt = tmp_path / "consumers" / "realtime.npz"
    other = _live(open_store("memory://"))
    other.rt = RealtimeFeatures((60,))                       # different windows than the server's
    other.publisher.rt = other.rt
    other.start(log, ckpt)
    other.stop()
    assert ckpt.exists()
    live = _live(open_store("memory://"))
    live.bind(_snapshot(), IDS, ["a"] * 10)
    live.start(log, ckpt)                                    # must not fail the server's start
    deadline = time.monotonic() + 10
    while live.read_items(["n1"], T0, np.zeros(1), np.zeros(1)).clicks[0] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    live.stop()
    log.close()
    assert (ckpt.parent / "realtime.npz.unusable").exists()
