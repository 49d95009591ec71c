"""``LiveFeatures.read_rows``: the per-row cache of store counts gives what an uncached
read gives, serves a value at most ``item_cache_s`` old, is invalidated by this process's
own publishing, falls back to the in-process counters when the store fails, and serves
the cached baseline fields when the stream stalls."""

from __future__ import annotations

import numpy as np

from feedrank.features.live import LiveFeatures
from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.store.factory import open_store
from feedrank.pipeline.artifacts import OnlineSnapshot
from feedrank.types import Event, EventKind

T0 = 1_767_225_600.0
IDS = [f"n{i}" for i in range(10)]


def _snapshot() -> OnlineSnapshot:
    return OnlineSnapshot(user_ids=np.array(["u0"]), histories=np.array([[-1, 3, 4]]), user_clicks=np.array([2]),
                          item_impressions=np.full(10, 100.0), item_clicks=np.full(10, 5.0))


def _live(store, wall, **kw) -> LiveFeatures:
    clock = lambda: wall[0]  # noqa: E731
    live = LiveFeatures(store, RealtimeFeatures((300, 3600, 86400), history_len=3, clock=clock), history_len=3,
                        clock=clock, stall_s=30.0, **kw)
    live.heartbeat_check_s = 0.0
    return live


def _clicks(live: LiveFeatures, item: str, n: int, tag: str) -> None:
    live.publisher.apply([Event(f"{tag}{j}", T0, f"u{j}", item, EventKind.CLICK) for j in range(n)])
    live.publisher.heartbeat(T0)


def test_cached_reads_equal_uncached_ones_then_expire(monkeypatch):
    wall = [T0]
    live = _live(open_store("memory://"), wall, item_cache_s=60.0)
    b = live.bind(_snapshot(), IDS, ["a"] * 10)
    _clicks(live, "n1", 3, "a")
    rows = np.array([1, 2, 1, 7])
    local = np.array([0.0, 4.0, 0.0, 1.0])
    want = live.read_items([IDS[r] for r in rows], T0, local, local)
    got = live.read_rows(b, rows, T0, local, local)
    assert got.status == want.status == "live"
    assert got.clicks.tolist() == want.clicks.tolist() == [3.0, 4.0, 3.0, 1.0]
    assert live.cache_misses == 3 and live.cache_hits == 0  # n1 twice in one request: read once

    other = _live(live.store, wall)  # another replica publishes: seen here only once the cache expires
    other.bind(_snapshot(), IDS, ["a"] * 10)
    _clicks(other, "n2", 9, "b")
    assert live.read_rows(b, np.array([2]), T0, np.zeros(1), np.zeros(1)).clicks.tolist() == [0.0]
    assert live.cache_hits == 1
    clock = [100.0]
    monkeypatch.setattr("feedrank.features.live.time.monotonic", lambda: clock[0])
    b.cached_at[:] = 100.0
    assert live.read_rows(b, np.array([2]), T0, np.zeros(1), np.zeros(1)).clicks.tolist() == [0.0]
    clock[0] = 161.0  # past item_cache_s
    assert live.read_rows(b, np.array([2]), T0, np.zeros(1), np.zeros(1)).clicks.tolist() == [9.0]


def test_own_publishing_invalidates_and_a_failed_store_means_fallbacks():
    wall = [T0]
    live = _live(open_store("memory://"), wall, item_cache_s=3600.0)
    b = live.bind(_snapshot(), IDS, ["a"] * 10)
    _clicks(live, "n3", 2, "a")
    assert live.read_rows(b, np.array([3]), T0, np.zeros(1), np.zeros(1)).clicks.tolist() == [2.0]
    _clicks(live, "n3", 5, "b")  # this process's consumer: the cached row is dropped at once
    assert live.read_rows(b, np.array([3]), T0, np.zeros(1), np.zeros(1)).clicks.tolist() == [7.0]

    def broken(*a, **k):
        raise ConnectionError("store down")

    live.store.get_items = broken
    got = live.read_rows(b, np.array([3, 4]), T0, np.array([1.0, 1.0]), np.array([1.0, 6.0]))
    assert got.status == "default"
    assert got.clicks.tolist() == [7.0, 6.0]  # the cached row kept, the unread one its in-process counter


def test_a_stalled_stream_switches_to_cached_baselines_and_extend_grows_the_cache():
    wall = [T0]
    live = _live(open_store("memory://"), wall, item_cache_s=3600.0)
    b = live.bind(_snapshot(), IDS, ["a"] * 10)
    live.load_baselines(["n5"], [48.0], [24.0], ts=T0)
    _clicks(live, "n5", 1, "a")
    assert live.read_rows(b, np.array([5]), T0, np.zeros(1), np.zeros(1)).status == "live"
    wall[0] = T0 + 31.0  # no heartbeat for longer than stall_s
    got = live.read_rows(b, np.array([5]), T0 + 31.0, np.zeros(1), np.zeros(1))
    assert got.status == "baseline" and got.clicks.tolist() == [24.0]  # 1 day window x 24 per day
    live.load_baselines(["n5"], [96.0], [48.0], ts=T0 + 31.0)  # written by this object: the cached row is dropped
    assert live.read_rows(b, np.array([5]), T0 + 31.0, np.zeros(1), np.zeros(1)).clicks.tolist() == [48.0]
    live.extend_catalog(b, ["n10"], ["a"])
    assert len(b.cached_at) == 11
    assert live.read_rows(b, np.array([10]), T0 + 31.0, np.zeros(1), np.array([2.0])).clicks.tolist() == [2.0]
    assert live.stats()["item_cache"]["misses"] == 3  # n5 (live, then baseline from the cache), n5 again, n10
    wall[0] = T0
    _clicks(live, "n10", 4, "c")  # an item added while serving: its cached row is dropped on publish too
    assert live.read_rows(b, np.array([10]), T0, np.zeros(1), np.zeros(1)).clicks.tolist() == [4.0]


def test_no_cache_reads_give_max_of_store_and_local_and_cache_nothing():
    wall = [T0]
    live = _live(open_store("memory://"), wall, item_cache_s=0.0)
    b = live.bind(_snapshot(), IDS, ["a"] * 10)
    _clicks(live, "n1", 3, "a")
    local = np.array([5.0, 1.0])  # n1: the in-process count is ahead of the store; n2: behind nothing
    got = live.read_rows(b, np.array([1, 2]), T0, local, local)
    assert got.status == "live"
    assert got.clicks.tolist() == [5.0, 1.0]  # max(store 3, local 5), max(store 0, local 1)
    assert np.isneginf(b.cached_at).all()  # item_cache_s = 0: nothing kept
    _clicks(live, "n1", 9, "c")  # 12 now: read at once, no cache to wait out
    assert live.read_rows(b, np.array([1]), T0, np.zeros(1), np.zeros(1)).clicks.tolist() == [12.0]
