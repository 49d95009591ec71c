"""The node consumer's shared-memory mirror (features/mirror.py): what one writer publishes
every reader sees, consistent slot by slot, bounded, and replaced cleanly; and a worker's
``LiveFeatures`` reading it (``MirrorStore``) behaves as with its own consumer."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from feedrank.features.live import LiveFeatures
from feedrank.features.live_io import STREAM_KEY, StorePublisher, item_hash, window_fields
from feedrank.features.mirror import C_DROPPED, C_ITEMS, MirrorWriter, _Mapped, item_key, item_keys, keys_from_hashes
from feedrank.features.mirror_reader import MirrorReader, MirrorStore
from feedrank.features.realtime import RealtimeFeatures

NAMES = ("imps_86400", "clicks_86400", "trending")


def _writer(path: Path, **kw) -> MirrorWriter:
    return MirrorWriter.create(path, NAMES, max_items=kw.pop("max_items", 1000), max_users=kw.pop("max_users", 100), **kw)


def test_items_round_trip_with_heartbeat_and_unknown_names(tmp_path: Path) -> None:
    w = _writer(tmp_path / "m")
    ids = [f"n{i}" for i in range(50)]
    table = np.arange(150, dtype=float).reshape(50, 3)
    w.put_item_table(ids, NAMES, table, ts=100.0, extra={STREAM_KEY: {"heartbeat": 99.0, "stream_now": 98.0}})
    r = MirrorReader(tmp_path / "m")
    b = r.get_items(["n3", "nope", "n7"], ["clicks_86400", "base_imps_day", "imps_86400"], now=101.0)
    assert b.found.tolist() == [True, False, True]
    np.testing.assert_array_equal(b.values[[0, 2]][:, [0, 2]], [[10.0, 9.0], [22.0, 21.0]])
    assert b.present.tolist() == [[True, False, True], [False, False, False], [True, False, True]]
    assert np.isnan(b.values[1]).all() and b.ts[0] == 100.0 and np.isnan(b.ts[1])
    beat = r.get_items([STREAM_KEY], ["heartbeat", "stream_now"], now=101.0)
    assert beat.values.tolist() == [[99.0, 98.0]] and beat.found.tolist() == [True]
    # the keyed read is the same read without hashing ids; binding keys come from item_hash
    k = r.get_keyed(keys_from_hashes([item_hash("n3")]), ["imps_86400"], now=101.0)
    assert k.values.tolist() == [[9.0]] and item_keys(["n3"])[0] == item_key("n3")
    # a second write of some columns keeps the others
    w.put_items({"n3": {"trending": -1.0}}, ts=102.0)
    b = r.get_items(["n3"], list(NAMES), now=103.0)
    assert b.values.tolist() == [[9.0, 10.0, -1.0]] and b.ts.tolist() == [102.0]


def test_users_round_trip_cold_and_truncated(tmp_path: Path) -> None:
    w = _writer(tmp_path / "m", user_fields=40)
    w.put_user("u1", {"n_clicks": 3.0, "c0": 1.5e14, "aff:tech": 0.25}, ts=100.0)
    r = MirrorReader(tmp_path / "m", ttl_s=50.0)
    assert r.get_user("u1", now=120.0) == {"n_clicks": 3.0, "c0": 1.5e14, "aff:tech": 0.25}
    assert r.get_user("u2", now=120.0) is None
    assert r.get_user("u1", now=151.0) is None  # older than the reader's ttl: cold
    big = {"n_clicks": 9.0, **{f"c{k}": float(k) for k in range(30)}, **{f"aff:x{k}": k / 100 for k in range(20)}}
    w.put_user("u3", big, ts=100.0)
    got = r.get_user("u3", now=101.0)
    assert len(got) == 40 and got["n_clicks"] == 9.0 and all(f"c{k}" in got for k in range(30))
    assert sorted(k for k in got if k.startswith("aff:")) == sorted(f"aff:x{k}" for k in range(11, 20))  # the largest
    assert r.stats()["truncated"] == 11
    w.put_user("u1", {"n_clicks": 4.0}, ts=130.0)  # a rewrite replaces the whole record
    assert r.get_user("u1", now=131.0) == {"n_clicks": 4.0}


def test_tables_stay_bounded_and_keep_the_newest(tmp_path: Path) -> None:
    w = _writer(tmp_path / "m", max_items=200, max_users=50)
    r = MirrorReader(tmp_path / "m")
    cap = r.stats()["cap_items"]
    for k in range(40):
        ids = [f"i{k}_{j}" for j in range(50)]
        w.put_item_table(ids, ["imps_86400"], np.full((50, 1), float(k)), ts=1000.0 + k)
        assert r.stats()["items"] <= 0.6 * cap
    newest = r.get_items([f"i39_{j}" for j in range(50)], ["imps_86400"], now=2000.0)
    assert newest.found.all() and (newest.values == 39.0).all()
    assert not r.get_items(["i0_0"], ["imps_86400"], now=2000.0).found[0]
    assert r.stats()["evicted"] > 0
    for k in range(500):
        w.put_user(f"u{k}", {"n_clicks": float(k)}, ts=float(k))
    assert r.stats()["users"] <= 0.6 * r.stats()["cap_users"]
    assert r.get_user("u499", now=600.0) == {"n_clicks": 499.0} and r.get_user("u0", now=600.0) is None


def test_a_slot_being_written_reads_as_missing(tmp_path: Path) -> None:
    w = _writer(tmp_path / "m")
    w.put_item_table(["a", "b"], ["imps_86400"], np.array([[1.0], [2.0]]), ts=10.0)
    r = MirrorReader(tmp_path / "m")
    t = w.m.item_bank()[0].table
    slot = int(t.find(np.asarray([item_key("a")]))[0])
    t.seq[slot] += 1  # the writer is in the middle of this slot
    b = r.get_items(["a", "b"], ["imps_86400"], now=11.0)
    assert b.found.tolist() == [False, True] and r.torn >= 1
    t.seq[slot] += 1
    assert r.get_items(["a"], ["imps_86400"], now=11.0).values.tolist() == [[1.0]]


def test_reader_waits_for_and_follows_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m"
    r = MirrorReader(path, recheck_s=0.0)
    with pytest.raises(ConnectionError, match="does not exist"):
        r.get_user("u1", now=1.0)
    w = _writer(path)
    w.put_user("u1", {"n_clicks": 1.0}, ts=1.0)
    assert r.get_user("u1", now=2.0) == {"n_clicks": 1.0}
    w.close()
    os.unlink(path)  # a restarting writer: the last map keeps serving
    assert r.get_user("u1", now=2.0) == {"n_clicks": 1.0}
    w2 = _writer(path)  # the new writer's (empty) file replaces it
    w2.put_user("u9", {"n_clicks": 9.0}, ts=3.0)
    assert r.get_user("u1", now=4.0) is None and r.get_user("u9", now=4.0) == {"n_clicks": 9.0}


def test_not_a_mirror_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="shorter than its header"):
        MirrorReader(bad).get_user("u", now=0.0)
    bad.write_bytes(b"NOTMAGIC" + b"\0" * (2 << 20))
    with pytest.raises(ValueError, match="not a feature mirror"):
        MirrorReader(bad).get_user("u", now=0.0)


def _hammer(path: str, seconds: float) -> None:
    """Writes items whose first value is their own number and whose second is the write's
    version (= its time), into tables small enough to be rebuilt again and again."""
    w = MirrorWriter(_Mapped(Path(path), writable=True))
    ids = [f"n{i}" for i in range(300)]
    v, end = 0.0, time.monotonic() + seconds
    rng = np.random.default_rng(0)
    while time.monotonic() < end:
        v += 1.0
        pick = rng.choice(300, 40, replace=False)
        table = np.stack([pick.astype(float), np.full(40, v)], 1)
        w.put_item_table([ids[i] for i in pick], ["imps_86400", "clicks_86400"], table, ts=v)
        u = int(rng.integers(0, 200))
        w.put_user(f"u{u}", {"n_clicks": float(u), "c0": v, "c1": v, "aff:a": v}, ts=v)


def test_reads_are_consistent_while_another_process_writes_and_rebuilds(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _writer(path, max_items=60, max_users=30).close()
    proc = mp.get_context("fork").Process(target=_hammer, args=(str(path), 2.0))
    proc.start()
    r = MirrorReader(path)
    seen = users = 0
    end = time.monotonic() + 2.0
    ids = [f"n{i}" for i in range(300)]
    while time.monotonic() < end:
        b = r.get_items(ids, ["imps_86400", "clicks_86400"], now=0.0)
        ok = b.found
        assert (b.values[ok, 0] == np.flatnonzero(ok)).all()  # never another item's record
        assert (b.ts[ok] == b.values[ok, 1]).all()             # never half of one write
        for u in range(0, 200, 7):
            rec = r.get_user(f"u{u}", now=0.0)
            if rec is not None:
                assert rec["n_clicks"] == float(u) and rec["c0"] == rec["c1"] == rec["aff:a"] >= 1.0  # one write
                users += 1
        seen += int(ok.sum())
    proc.join(10)
    assert proc.exitcode == 0 and seen > 0 and users > 0
    assert r.stats()["evicted"] > 0  # the tables were rebuilt under the reads


def test_a_batch_larger_than_the_table_keeps_what_fits(tmp_path: Path) -> None:
    w = _writer(tmp_path / "m", max_items=10)
    ids = [f"n{i}" for i in range(100)]
    w.put_item_table(ids, ["imps_86400"], np.arange(100, dtype=float)[:, None], ts=1.0)
    r = MirrorReader(tmp_path / "m")
    b = r.get_items(ids, ["imps_86400"], now=2.0)
    found = np.flatnonzero(b.found)
    assert len(found) == r.stats()["items"] > 0 and (b.values[found, 0] == found).all()
    assert len(found) <= 0.6 * r.stats()["cap_items"]  # never fuller than a table may be
    assert int(r._map().ci[C_DROPPED]) == 100 - len(found)


def test_a_long_user_record_keeps_its_newest_clicks(tmp_path: Path) -> None:
    w = _writer(tmp_path / "m", user_fields=16)
    rec = {"n_clicks": 30.0, **{f"c{k}": float(100 + k) for k in range(30)}, "aff:a": 0.5}
    w.put_user("u", rec, ts=1.0)
    got = MirrorReader(tmp_path / "m").get_user("u", now=2.0)
    assert got == {"n_clicks": 30.0, **{f"c{k}": float(115 + k) for k in range(15)}}  # oldest first, renumbered


# ---------------------------------------------------------------------- a worker reading it


class _Snap:
    def __init__(self, n_items: int) -> None:
        self.user_ids = np.asarray(["u_old"])
        self.user_clicks = np.asarray([2])
        self.histories = np.asarray([[0, 1]])
        self.item_impressions = np.full(n_items, 10.0)
        self.item_clicks = np.full(n_items, 1.0)


def test_live_features_over_the_mirror(tmp_path: Path) -> None:
    ids = [f"n{i}" for i in range(20)]
    cats = ["a"] * 10 + ["b"] * 10
    rt = RealtimeFeatures((300, 3600, 86400), item_category=dict(zip(ids, cats)).get)
    w = MirrorWriter.create(tmp_path / "m", window_fields(rt.windows), max_items=100, max_users=100)
    pub = StorePublisher(rt, w, 30, base_user=lambda u: (2, ["n0", "n1"]) if u == "u_old" else (0, []))
    now = time.time()
    from feedrank.data.events import Event, EventKind

    evs = [Event(f"e{k}", now - 10 + k * 0.1, "u_old", ids[5], EventKind.IMPRESSION) for k in range(4)]
    evs += [Event("c1", now - 5, "u_old", ids[5], EventKind.CLICK), Event("c2", now - 4, "u_new", ids[12], EventKind.CLICK)]
    pub.apply(evs)
    w.set_hot(["n5", "n12"])

    store = MirrorStore(tmp_path / "m")
    live = LiveFeatures(store, RealtimeFeatures((300, 3600, 86400)), history_len=30)
    assert live.mirror
    binding = live.bind(_Snap(len(ids)), ids, cats)
    live.load_baselines(ids, np.full(20, 48.0), np.full(20, 4.0))
    live.start(None)  # no consumer here: the node's process publishes
    assert live.consumer is None
    user, status = live.read_user("u_old", now, binding)
    assert status == "live" and user.n_clicks == 3
    assert [binding.hash_rows[h] for h in user.recent_hashes] == [0, 1, 5] and user.category_affinity == {"a": 1.0}
    got = live.read_rows(binding, np.asarray([5, 12, 3]), now, np.zeros(3), np.zeros(3))
    assert got.status == "live" and got.clicks.tolist() == [1.0, 1.0, 0.0]
    assert got.impressions.tolist() == [5.0, 1.0, 0.0]  # a click counts as seen
    assert live.hot_items(now, 1) == ["n5"]
    s = live.stats()
    assert s["consumer"]["applied"] == 0 and s["heartbeat_age_s"] is not None and not s["stalled"]
    # the node stops beating: after stall_s the baselines serve (read from this process's own columns)
    w.heartbeat(now - 3600.0)
    live2 = LiveFeatures(MirrorStore(tmp_path / "m"), RealtimeFeatures((300, 3600, 86400)), stall_s=60.0)
    b2 = live2.bind(_Snap(len(ids)), ids, cats)
    live2.load_baselines(ids, np.full(20, 48.0), np.full(20, 4.0))
    got = live2.read_rows(b2, np.asarray([5, 3]), now, np.zeros(2), np.zeros(2))
    assert got.status == "baseline" and got.impressions.tolist() == [48.0, 48.0] and got.clicks.tolist() == [4.0, 4.0]


def test_mirror_store_is_read_only(tmp_path: Path) -> None:
    _writer(tmp_path / "m").close()
    store = MirrorStore(tmp_path / "m")
    with pytest.raises(TypeError, match="user records are the node consumer's"):
        store.put_user("u1", {"n_clicks": 1.0}, ts=0.0)
    with pytest.raises(TypeError, match="item records"):
        store.put_items({"n1": {"base_imps_day": 1.0}}, ts=0.0)
    assert int(MirrorReader(tmp_path / "m")._map().ci[C_ITEMS]) == 0


def test_a_missing_or_stalled_node_reads_as_the_per_worker_path_would(tmp_path: Path) -> None:
    ids = [f"n{i}" for i in range(6)]
    cats = ["a"] * 6
    live = LiveFeatures(MirrorStore(tmp_path / "m"), RealtimeFeatures((300, 3600, 86400)), stall_s=60.0)
    binding = live.bind(_Snap(len(ids)), ids, cats)
    live.load_baselines(ids, np.full(6, 24.0), np.full(6, 2.0))
    now = time.time()
    # no mirror yet (the node consumer is starting): defaults, for users and items alike
    assert live.read_user("u", now, binding) == (None, "default")
    got = live.read_rows(binding, np.asarray([0, 1]), now, np.full(2, 3.0), np.zeros(2))
    assert got.status == "default" and got.impressions.tolist() == [3.0, 3.0]
    w = MirrorWriter.create(tmp_path / "m", window_fields((300, 3600, 86400)), max_items=100, max_users=100)
    w.heartbeat(now - 3600.0)  # a node that stopped beating an hour ago
    w.set_hot(["n1"])
    live2 = LiveFeatures(MirrorStore(tmp_path / "m"), RealtimeFeatures((300, 3600, 86400)), stall_s=60.0)
    b2 = live2.bind(_Snap(len(ids)), ids, cats)
    live2.load_baselines(ids, np.full(6, 24.0), np.full(6, 2.0))
    assert live2.hot_items(now, 5) == []  # a stalled node's hot list does not decay: not served
    live2.extend_catalog(b2, ["n2", "new"], ["a", "a"])  # an update of n2 keeps its baseline
    got = live2.read_rows(b2, np.asarray([6, 7]), now, np.zeros(2), np.zeros(2))
    assert got.status == "baseline" and got.impressions.tolist() == [24.0, 0.0]
    w.heartbeat(time.time())
    live2.heartbeat_check_s = 0.0  # read the heartbeat again now
    assert live2.hot_items(now, 5) == ["n1"]
    # a node consumer publishing other windows than these workers read: defaults, not zeros as live
    MirrorWriter.create(tmp_path / "m", window_fields((60,)), max_items=100, max_users=100).heartbeat(time.time())
    live3 = LiveFeatures(MirrorStore(tmp_path / "m"), RealtimeFeatures((300, 3600, 86400)), stall_s=60.0)
    b3 = live3.bind(_Snap(len(ids)), ids, cats)
    assert live3.read_rows(b3, np.asarray([0]), now, np.zeros(1), np.zeros(1)).status == "default"
