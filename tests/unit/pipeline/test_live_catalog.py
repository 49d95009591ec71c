"""``LiveCatalog``: the time-sorted per-key indexes answer exactly what a brute-force scan
over the whole catalogue answers, under adds, updates (replaced rows), expiry and an age
limit."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.pipeline.live_catalog import LiveCatalog, TimeIndex


def _brute(pub, exp, dead, max_age, keys_by_index, queries, now, window, k):
    """Every row scanned: live, in [now - window, now], matching a query; newest first, ties by row."""
    age = now - pub
    ok = (exp > now) & ~dead & (age >= 0) & (age <= window)
    if max_age is not None:
        ok &= age <= max_age
    match = np.zeros(len(pub), dtype=bool)
    for index, keys in queries:
        if index is None:
            match[:] = True
        else:
            match |= np.isin(keys_by_index[index], keys)
    rows = np.flatnonzero(ok & match)
    return rows[np.lexsort((rows, -pub[rows]))][:k]


def _world(rng, n):
    pub = rng.integers(0, 200, n).astype(np.float64)  # integer seconds: many exact ties
    pub[rng.random(n) < 0.05] = np.nan                  # unknown publish time: never in a window
    exp = np.where(rng.random(n) < 0.2, rng.integers(0, 300, n).astype(np.float64), np.inf)
    keys = {"category": rng.integers(0, 5, n), "creator": rng.integers(0, 40, n)}
    return pub, exp, keys


@pytest.mark.parametrize("max_age", [None, 90.0])
def test_newest_matches_brute_force_under_adds_updates_and_expiry(max_age):
    rng = np.random.default_rng(7)
    pub, exp, keys = _world(rng, 400)
    cat = LiveCatalog(pub, keys, max_age_s=max_age, expires_at=exp)
    dead = np.zeros(len(pub), dtype=bool)
    for step in range(6):
        if step:  # items posted while serving, some of them updates of older rows
            m = int(rng.integers(1, 30))
            p2, e2, k2 = _world(rng, m)
            p2 = np.where(np.isnan(p2), np.nan, p2 + 20 * step)
            replaced = rng.choice(len(pub), size=min(3, m), replace=False)
            rows = np.arange(len(pub), len(pub) + m)
            cat.add(rows, p2, k2, e2, replaced=replaced)
            pub, exp = np.concatenate([pub, p2]), np.concatenate([exp, e2])
            keys = {n: np.concatenate([keys[n], k2[n]]) for n in keys}
            dead = np.concatenate([dead, np.zeros(m, dtype=bool)])
            dead[replaced] = True
        for now in (50.0, 150.0, 199.0, 260.0):
            for window, k in ((60.0, 5), (500.0, 50), (30.0, 1000)):
                ks = [int(x) for x in rng.choice(5, size=2, replace=False)]
                got = cat.newest("category", ks, now, window, k)
                assert got.tolist() == _brute(pub, exp, dead, max_age, keys, [("category", ks)], now, window, k).tolist()
                got = cat.newest(None, None, now, window, k)
                assert got.tolist() == _brute(pub, exp, dead, max_age, keys, [(None, None)], now, window, k).tolist()
                qs = [("creator", [1, 2, 3]), ("category", [4])]
                got = cat.newest_of(qs, now, window, k)
                assert got.tolist() == _brute(pub, exp, dead, max_age, keys, qs, now, window, k).tolist()
            every = np.arange(len(pub))
            live = cat.live_rows(now)
            assert live is not None
            assert live.tolist() == every[cat.mask(every, now)].tolist()
            age = now - pub
            want = (exp > now) & ~dead & ((max_age is None) | ((age >= 0) & (age <= (max_age or 0))))
            assert cat.mask(every, now).tolist() == want.tolist()


def test_always_live_only_without_limits_expiry_or_updates():
    pub = np.arange(10, dtype=np.float64)
    cat = LiveCatalog(pub, {"category": np.zeros(10, dtype=np.int64)})
    assert cat.always_live and cat.live_rows(5.0) is None
    assert cat.newest(None, None, 5.0, 2.0, 10).tolist() == [5, 4, 3]
    cat.add(np.array([10]), np.array([9.0]), {"category": np.array([0])})
    assert cat.always_live
    assert cat.newest("category", [0], 9.0, 0.0, 10).tolist() == [9, 10]  # a tie: row order
    cat.add(np.array([11]), np.array([9.0]), {"category": np.array([0])}, replaced=[9])
    assert not cat.always_live
    assert cat.newest("category", [0], 9.0, 0.0, 10).tolist() == [10, 11]
    assert not LiveCatalog(pub, {}, max_age_s=3.0).always_live
    assert not LiveCatalog(pub, {}, expires_at=np.full(10, 100.0)).always_live


def test_bad_input_is_named():
    pub = np.zeros(3)
    with pytest.raises(ValueError, match="category"):
        LiveCatalog(pub, {"category": np.zeros(2)})
    cat = LiveCatalog(pub, {"category": np.zeros(3)})
    with pytest.raises(ValueError, match=r"rows must follow the catalogue \(3"):
        cat.add(np.array([5]), np.array([1.0]), {"category": np.array([0])})
    with pytest.raises(ValueError, match="category"):
        cat.add(np.array([3]), np.array([1.0]), {})
    with pytest.raises(ValueError, match="no time index 'creator'"):
        cat.newest("creator", [1], 1.0, 1.0, 5)
    with pytest.raises(ValueError, match="equal 1-d"):
        TimeIndex(np.zeros(3), np.zeros(4))
