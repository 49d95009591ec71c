"""Point-in-time counters of the retrieval prior: a counter read at t never includes an
event at or after t, and matches a brute-force count."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.retrieval.counters import RECENT_TAU_S, CounterReplay, counters_at, creator_codes


def _events(seed: int, n_items: int = 7, n: int = 300):
    rng = np.random.default_rng(seed)
    ts = np.round(rng.uniform(0, 5 * 86400, n))  # rounded: many ties, some at the query times
    return rng.integers(0, n_items, n), ts


@pytest.mark.parametrize("seed", range(5))
def test_a_counter_read_at_t_never_includes_events_at_or_after_t(seed: int):
    n_items = 7
    ci, ct = _events(seed, n_items)
    ii, it = _events(seed + 100, n_items, 900)
    creators = np.array([0, 0, 1, 1, 1, -1, 2])
    queries = np.sort(np.concatenate([ct[:20], it[:20], np.random.default_rng(seed).uniform(0, 5 * 86400, 20)]))
    rep = CounterReplay(n_items, ci, ct, ii, it, creators)
    for t in queries:
        rep.advance(t)
        c = rep.snapshot()
        want_c = np.bincount(ci[ct < t], minlength=n_items)
        want_i = np.bincount(ii[it < t], minlength=n_items)
        assert c.clicks.tolist() == want_c.tolist()
        assert c.impressions.tolist() == want_i.tolist()
        for item in range(n_items):
            same = (creators == creators[item]) & (creators >= 0)
            exp_cc = want_c[same].sum() if creators[item] >= 0 else 0
            assert c.creator_clicks[item] == exp_cc
            assert c.creator_impressions[item] == (want_i[same].sum() if creators[item] >= 0 else 0)
        past = ct < t
        recent = np.bincount(ci[past], weights=np.exp(-(t - ct[past]) / RECENT_TAU_S), minlength=n_items)
        assert np.allclose(c.recent_clicks, recent, rtol=1e-9, atol=1e-12)


def test_counters_at_returns_rows_in_query_order_and_a_subset_of_items():
    ci, ct = np.array([0, 1, 0, 2]), np.array([5.0, 1.0, 9.0, 20.0])
    got = counters_at(CounterReplay(3, ci, ct), np.array([10.0, 0.0, 5.0]), items=np.array([0, 2]))
    assert got["clicks"].tolist() == [[2, 0], [0, 0], [0, 0]]  # the click at 5.0 is not before 5.0
    assert "impressions" not in got


def test_time_cannot_go_back_and_bad_input_is_named():
    rep = CounterReplay(2, np.array([0]), np.array([1.0]))
    rep.advance(5.0)
    with pytest.raises(ValueError, match="time went back"):
        rep.advance(4.0)
    with pytest.raises(ValueError, match="outside"):
        CounterReplay(2, np.array([2]), np.array([1.0]))
    with pytest.raises(ValueError, match="differ in shape"):
        CounterReplay(2, np.array([0, 1]), np.array([1.0]))
    with pytest.raises(ValueError, match="creators"):
        CounterReplay(2, np.array([0]), np.array([1.0]), creators=np.array([0]))


def test_creator_codes_leave_unknown_creators_alone():
    codes = creator_codes(np.array(["c1", "unknown", "c2", "c1", "", None], dtype=object))
    assert codes[0] == codes[3] and codes[0] != codes[2]
    assert codes[[1, 4, 5]].tolist() == [-1, -1, -1]


@pytest.mark.parametrize("seed", range(3))
def test_counters_at_equals_a_replay_advanced_to_each_time(seed: int):
    n_items = 7
    ci, ct = _events(seed, n_items)
    ii, it = _events(seed + 50, n_items, 900)
    creators = np.array([0, 0, 1, 1, 1, -1, 2])
    rng = np.random.default_rng(seed)
    queries = np.concatenate([ct[:10], rng.uniform(0, 5 * 86400, 15)])
    cols = np.array([6, 0, 5, 3])
    got = counters_at(CounterReplay(n_items, ci, ct, ii, it, creators), queries, cols)
    for q, t in enumerate(queries):
        rep = CounterReplay(n_items, ci, ct, ii, it, creators)
        rep.advance(t)
        snap = rep.snapshot()
        for name in ("clicks", "impressions", "creator_clicks", "creator_impressions", "recent_clicks"):
            assert np.allclose(got[name][q], getattr(snap, name)[cols], rtol=1e-5, atol=1e-5), (name, q)
