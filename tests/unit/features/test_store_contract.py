"""One contract for every OnlineStore backend: memory://, sqlite:///, redis://."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from feedrank.errors import ConfigError
from feedrank.features.store import OnlineStore, open_store
from feedrank.features.store.protocol import COUNTER_BUCKETS

T0 = 1_700_000_000.0
TTL = 3600.0
_db = itertools.count(0)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> OnlineStore:
    kind = request.param
    if kind == "memory":
        url = "memory://"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'features.db'}"
    else:
        base = request.getfixturevalue("redis_server")
        url = f"{base}/{next(_db) % 16}?prefix=t{next(_db)}:"
    s = open_store(url, ttl_s=TTL)
    if kind == "redis":
        s.import_state({})  # a clean namespace even if the db was used before
    yield s
    s.close()


def test_is_an_online_store(store: OnlineStore):
    assert isinstance(store, OnlineStore)
    assert store.ttl_s == TTL


def test_user_put_get_merge(store: OnlineStore):
    assert store.get_user("u1", now=T0) is None
    store.put_user("u1", {"n_clicks": 3, "ctr": 0.25}, ts=T0)
    assert store.get_user("u1", now=T0) == {"n_clicks": 3.0, "ctr": 0.25}
    store.put_user("u1", {"ctr": 0.5}, ts=T0 + 1)  # merge: other names kept
    assert store.get_user("u1", now=T0 + 1) == {"n_clicks": 3.0, "ctr": 0.5}


def test_values_are_typed(store: OnlineStore):
    with pytest.raises(TypeError, match="expected a number"):
        store.put_user("u1", {"x": "1.0"}, ts=T0)  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        store.put_items({"i1": {"x": True}}, ts=T0)
    assert store.get_user("u1", now=T0) is None
    assert not store.get_items(["i1"], ["x"], now=T0).found[0]


def test_batched_item_reads(store: OnlineStore):
    store.put_items({f"i{k}": {"ctr": k / 100, "imps": float(k)} for k in range(2000)}, ts=T0)
    ids = ["i5", "nope", "i1999", "i5"]
    batch = store.get_items(ids, ["imps", "ctr", "missing"], now=T0)
    assert batch.values.shape == (4, 3) and batch.values.dtype == np.float64
    assert batch.found.tolist() == [True, False, True, True]
    np.testing.assert_allclose(batch.values[0, :2], [5.0, 0.05])
    np.testing.assert_allclose(batch.values[2, :2], [1999.0, 19.99])
    assert np.isnan(batch.values[1]).all() and np.isnan(batch.values[:, 2]).all()
    assert batch.ts[0] == T0 and math.isnan(batch.ts[1])
    np.testing.assert_allclose(batch.filled([0.0, -1.0, 7.0])[1], [0.0, -1.0, 7.0])
    assert store.get_items([], ["ctr"], now=T0).values.shape == (0, 1)


def test_counters_slide(store: OnlineStore):
    w = 300
    step = w / COUNTER_BUCKETS
    store.incr(["a", "b"], window_s=w, ts=T0)
    store.incr(["a"], window_s=w, ts=T0 + 1, amount=2.0)
    store.incr(["a", "b"], window_s=w, ts=T0 + 2, amount=[1.0, 5.0])
    store.incr(["a"], window_s=3600, ts=T0)  # another window is another counter
    np.testing.assert_allclose(store.get_counts(["a", "b", "zz"], window_s=w, now=T0 + 2), [4.0, 6.0, 0.0])
    # a window later, everything has slid out (within one bucket of resolution)
    np.testing.assert_allclose(store.get_counts(["a", "b"], window_s=w, now=T0 + w + step + 2), [0.0, 0.0])
    np.testing.assert_allclose(store.get_counts(["a"], window_s=3600, now=T0 + w + step), [1.0])
    with pytest.raises(ValueError):
        store.incr(["a", "b"], window_s=w, ts=T0, amount=[1.0])


def test_ttl_and_eviction(store: OnlineStore):
    store.put_user("old", {"x": 1.0}, ts=T0)
    store.put_user("new", {"x": 2.0}, ts=T0 + TTL)
    store.put_items({"i_old": {"x": 1.0}}, ts=T0)
    store.incr(["k"], window_s=300, ts=T0)
    now = T0 + TTL + 10
    assert store.get_user("old", now=now) is None  # cold = missing, even before evict
    assert store.get_user("new", now=now) == {"x": 2.0}
    assert not store.get_items(["i_old"], ["x"], now=now).found[0]
    assert store.evict(now) == 2
    state = store.export_state()
    assert set(state["users"]) == {"new"} and state["items"] == {}
    assert not any(state["counters"].get(300, {}).values())


def test_snapshot_restore(store: OnlineStore, tmp_path: Path):
    store.put_user("u1", {"a": 1.5}, ts=T0)
    store.put_items({"i1": {"ctr": 0.1}, "i2": {"ctr": 0.2}}, ts=T0 + 1)
    store.incr(["i1:click"], window_s=3600, ts=T0, amount=3.0)
    path = store.snapshot(tmp_path / "snap" / "store.json")
    assert path.exists() and not path.with_name(path.name + ".tmp").exists()
    store.put_user("u1", {"a": 9.0}, ts=T0 + 2)
    store.put_user("u2", {"a": 1.0}, ts=T0 + 2)
    store.incr(["i1:click"], window_s=3600, ts=T0)
    store.restore(path)
    assert store.get_user("u1", now=T0 + 2) == {"a": 1.5}
    assert store.get_user("u2", now=T0 + 2) is None
    np.testing.assert_allclose(store.get_items(["i2"], ["ctr"], now=T0 + 2).values, [[0.2]])
    np.testing.assert_allclose(store.get_counts(["i1:click"], window_s=3600, now=T0 + 5), [3.0])
    # a snapshot taken on one backend restores on the in-process one (same format)
    other = open_store("memory://", ttl_s=TTL)
    other.restore(path)
    assert other.export_state() == store.export_state()


def test_open_store_rejects_bad_urls():
    for url in ("mysql://x", "sqlite://", "redis:///0", "nothing"):
        with pytest.raises(ConfigError):
            open_store(url)


def test_item_table_puts_merge_like_put_items(store: OnlineStore):
    store.put_items({"i1": {"base": 7.0, "ctr": 0.5}}, ts=T0)
    table = np.array([[1.0, 0.1], [2.0, 0.2], [3.0, float("nan")]])
    store.put_item_table(["i1", "i2", "i1"], ["imps", "ctr"], table, ts=T0 + 1, extra={"__beat__": {"hb": T0 + 1}})
    batch = store.get_items(["i1", "i2", "__beat__"], ["imps", "ctr", "base", "hb"], now=T0 + 1)
    assert batch.found.tolist() == [True, True, True]
    np.testing.assert_allclose(batch.values[0, :3], [3.0, np.nan, 7.0])  # the last row of i1 wins; base kept
    np.testing.assert_allclose(batch.values[1, :2], [2.0, 0.2])
    assert batch.values[2, 3] == T0 + 1 and batch.ts[1] == T0 + 1
    assert store.export_state()["items"]["i2"] == [T0 + 1, {"imps": 2.0, "ctr": 0.2}]
    with pytest.raises(ValueError, match="shape"):
        store.put_item_table(["i1"], ["imps", "ctr"], np.zeros((2, 2)), ts=T0)
    with pytest.raises(TypeError):
        store.put_item_table(["i9"], ["imps"], np.zeros((1, 1)), ts=T0, extra={"x": {"y": "no"}})  # type: ignore[dict-item]
    for bad in (np.array([[True]]), np.array([["1.5"]]), [[None]]):  # as put_items: numbers only
        with pytest.raises(TypeError, match="expected numbers"):
            store.put_item_table(["i9"], ["imps"], bad, ts=T0)
    assert not store.get_items(["i9"], ["imps"], now=T0 + 1).found[0]


def test_memory_store_drops_the_oldest_writes_over_max_records():
    from feedrank.features.store.memory import MemoryStore

    s = MemoryStore(ttl_s=TTL, max_records=5)
    s.put_user("u1", {"x": 1.0}, ts=T0)
    s.put_item_table([f"i{k}" for k in range(4)], ["x"], np.arange(4.0)[:, None], ts=T0 + 1)
    s.put_items({"i0": {"x": 9.0}}, ts=T0 + 2)                    # i0 written again: now the newest
    s.put_item_table(["i4", "i5"], ["x"], np.array([[4.0], [5.0]]), ts=T0 + 3)
    assert len(s) == 5 and s.evicted == 2
    state = s.export_state()
    # the larger table (items) loses its oldest writes, i1 then i2; the user stays
    assert list(state["users"]) == ["u1"]
    assert list(state["items"]) == ["i3", "i0", "i4", "i5"]  # in write order
    assert s.get_items(["i0", "i1"], ["x"], now=T0 + 3).values[:, 0].tolist()[0] == 9.0
