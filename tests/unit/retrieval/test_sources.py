"""Candidate sources (trending, followed, fresh pool) and the budgeted runner + merger."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import numpy as np
import pytest

from feedrank.retrieval.sources import (SourceResult, decayed_counts, followed_keys, gather_sources, merge_sources,
                                        trending_items)
from feedrank.retrieval.sources_reference import followed_items, merge_sources_reference, recent_pool


def _src(name: str, items, scores=None) -> SourceResult:
    items = np.asarray(items, dtype=np.int64)
    return SourceResult(name, items, np.zeros(len(items), dtype=np.float32) if scores is None else np.asarray(scores, np.float32))


def test_decayed_counts_halve_after_ln2_tau_and_never_grow():
    v = decayed_counts(np.array([8.0, 8.0, 8.0]), np.array([0.0, 100.0, 500.0]), now=100.0, tau_s=100.0 / np.log(2))
    assert v.tolist() == pytest.approx([4.0, 8.0, 8.0])  # an update "in the future" is not inflated


def test_trending_orders_by_recent_clicks_with_threshold_and_eligibility():
    recent = np.array([0.5, 9.0, 3.0, 9.0, 0.0, 4.0])
    assert trending_items(recent, 10).tolist() == [1, 3, 5, 2]            # ties by index; < 1 click dropped
    assert trending_items(recent, 2).tolist() == [1, 3]
    assert trending_items(recent, 10, min_clicks=0.0).tolist() == [1, 3, 5, 2, 0, 4]
    assert trending_items(recent, 10, eligible=np.array([5, 2, 1])).tolist() == [1, 5, 2]
    assert trending_items(recent, 10, eligible=np.zeros(0, dtype=np.int64)).tolist() == []
    assert trending_items(np.array([np.nan, 2.0]), 5).tolist() == [1]


def test_followed_keys_need_repeated_clicks_and_skip_ignored():
    hist = np.array([-1, -1, 7, 3, 7, 5, 3, 3, 9, 9])  # 3 x3, 7 x2, 9 x2 (9 clicked last), 5 x1
    assert followed_keys(hist, 2).tolist() == [3, 9, 7]
    assert followed_keys(hist, 3).tolist() == [3]
    assert followed_keys(hist, 2, ignore=[3]).tolist() == [9, 7]
    assert followed_keys(np.array([-1, -1]), 1).tolist() == []


def test_followed_items_match_any_key_kind_within_the_age_window_newest_first():
    creators = np.array([1, 2, 1, 3, 1, 2])
    topics = np.array([10, 11, 12, 11, 10, 13])
    published = np.array([90.0, 95.0, 99.0, 98.0, 50.0, 101.0])  # item 4 too old, item 5 in the future
    got = followed_items((creators, topics), (np.array([1]), np.array([11])), published, now=100.0, max_age_s=20.0, k=10)
    assert got.tolist() == [2, 3, 1, 0]
    assert followed_items((creators, topics), (np.array([1]), np.array([11])), published, 100.0, 20.0, k=2).tolist() == [2, 3]
    pool = recent_pool(published, 100.0, 20.0)
    assert pool.tolist() == [2, 3, 1, 0]
    assert followed_items((creators,), (np.array([2]),), published, 100.0, 20.0, 10, pool=pool).tolist() == [1]
    assert followed_items((creators,), (np.zeros(0, dtype=np.int64),), published, 100.0, 20.0, 10).tolist() == []


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_sequential_runner_drops_late_and_failing_sources():
    clock = _Clock()

    def slow():
        clock.t += 1.0  # "takes" one second of the injected clock
        return _src("slow", [1, 2])

    def broken():
        raise RuntimeError("follow graph unavailable")

    fetchers = {"fast": lambda: _src("fast", [3]), "slow": slow, "broken": broken, "free": slow}
    results, status = gather_sources(fetchers, {"fast": 5.0, "slow": 5.0, "broken": 5.0, "free": 0.0}, clock=clock)
    assert status == {"fast": "ok", "slow": "late", "broken": "error", "free": "ok"}
    assert [r.name for r in results] == ["fast", "slow"]  # "free" has no budget; its result says "slow"


def test_pooled_runner_abandons_a_stuck_source_without_waiting_for_it():
    release = threading.Event()

    def stuck():
        release.wait(30.0)
        return _src("stuck", [9])

    with cf.ThreadPoolExecutor(2) as pool:
        results, status = gather_sources({"stuck": stuck, "fast": lambda: _src("fast", [1])},
                                         {"stuck": 20.0, "fast": 0.0}, executor=pool)
        assert not release.is_set()  # gather returned while the stuck source was still blocked
        release.set()
    assert status == {"stuck": "late", "fast": "ok"}
    assert [r.name for r in results] == ["fast"]


def test_late_source_quota_is_filled_from_fallbacks_in_order():
    ann = _src("ann", [1, 2, 3])
    trending = _src("trending", [4, 5, 6, 7])
    popular = _src("popular", [1, 8, 9, 10, 11])
    quotas = {"ann": 3, "fresh": 3, "trending": 2, "popular": 2}
    full = merge_sources([ann, _src("fresh", [20, 21, 22]), trending, popular], quotas, total=10, fallbacks=("trending", "popular"))
    assert full.items.tolist() == [1, 2, 3, 20, 21, 22, 4, 5, 8, 9]
    late = merge_sources([ann, trending, popular], quotas, total=10, fallbacks=("trending", "popular"))  # fresh dropped
    assert late.items.tolist() == [1, 2, 3, 4, 5, 8, 9, 6, 7, 10]
    assert late.sources == ["ann"] * 3 + ["trending"] * 2 + ["popular"] * 2 + ["trending"] * 2 + ["popular"]
    assert late.taken == {"ann": 3, "trending": 4, "popular": 3}


@pytest.mark.parametrize("seed", range(25))
def test_merge_properties(seed: int):
    """Random sources and quotas: no duplicates, nothing excluded, quotas hold for the
    non-fallback sources, the list is as full as the sources allow, first source wins."""
    rng = np.random.default_rng(seed)
    names = ["ann", "fresh", "followed", "trending", "popular"]
    results = [_src(n, rng.choice(60, size=rng.integers(0, 40), replace=False)) for n in names if rng.random() < 0.85]
    quotas = {n: int(rng.integers(0, 20)) for n in names}
    total = int(rng.integers(1, 80))
    exclude = set(rng.choice(60, size=5, replace=False).tolist())
    fallbacks = ("trending", "popular")
    m = merge_sources(results, quotas, total, fallbacks=fallbacks, exclude=exclude)
    items = m.items.tolist()
    assert len(items) == len(set(items)) == len(m.sources) == len(m.scores) <= total
    assert not set(items) & exclude
    for r in results:
        mine = [i for i, s in zip(items, m.sources) if s == r.name]
        assert set(mine) <= set(r.items.tolist())
        if r.name not in fallbacks:
            assert len(mine) <= quotas[r.name]
    first = {}
    for r in results:  # the source that keeps an item is the first one that proposed it, unless
        for i in r.items.tolist():  # that one's quota was already spent
            first.setdefault(i, r.name)
    by_src = dict(zip(items, m.sources))
    assert all(names.index(by_src[i]) >= names.index(first[i]) for i in items)
    available = set().union(*[set(r.items.tolist()) for r in results if r.name in fallbacks]) - exclude
    if len(items) < total:  # not full: every fallback item is already in
        assert available <= set(items)


def _merge_reference(results, quotas, total, fallbacks=(), exclude=None):
    m = merge_sources_reference(results, quotas, total, fallbacks, exclude)
    return m.items.tolist(), m.sources, m.scores.tolist(), m.taken


@pytest.mark.parametrize("seed", range(40))
def test_merge_equals_the_per_item_reference(seed: int):
    rng = np.random.default_rng(100 + seed)
    names = ["ann", "fresh", "followed", "trending", "popular"]
    sizes = {n: int(rng.integers(0, 60)) for n in names if rng.random() < 0.85}
    results = [SourceResult(n, rng.integers(0, 80, size=k).astype(np.int64),  # duplicates within a source too
                            rng.random(k).astype(np.float32)) for n, k in sizes.items()]
    quotas = {n: int(rng.integers(0, 25)) for n in names if rng.random() < 0.9}
    total = int(rng.integers(0, 120))
    exclude = set(rng.integers(0, 80, size=int(rng.integers(0, 10))).tolist()) or None
    m = merge_sources(results, quotas, total, fallbacks=("trending", "popular"), exclude=exclude)
    items, sources, scores, taken = _merge_reference(results, quotas, total, ("trending", "popular"), exclude)
    assert m.items.tolist() == items and m.sources == sources and m.scores.tolist() == scores and m.taken == taken
    assert m.items.dtype == np.int64 and m.scores.dtype == np.float32


def test_sorted_unique_equals_numpy_unique_and_union():
    from feedrank.retrieval.sources import sorted_unique

    rng = np.random.default_rng(0)
    for _ in range(200):
        parts = [rng.integers(0, 50, int(rng.integers(0, 30))) for _ in range(int(rng.integers(1, 4)))]
        before = [p.copy() for p in parts]
        got = sorted_unique(*parts)
        np.testing.assert_array_equal(got, np.unique(np.concatenate(parts)))
        assert got.dtype == np.concatenate(parts).dtype
        if len(parts) == 2:
            np.testing.assert_array_equal(got, np.union1d(*parts))
        for p, b in zip(parts, before):  # inputs are not sorted in place
            np.testing.assert_array_equal(p, b)


@pytest.mark.parametrize("seed", range(5))
def test_followed_keys_dict_path_equals_the_numpy_path(seed, monkeypatch):
    import feedrank.retrieval.sources as src

    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(200):
        h = rng.integers(-1, int(rng.integers(2, 12)), int(rng.integers(0, 40)))  # -1: padding
        cases.append((h, int(rng.integers(0, 4)), tuple(rng.integers(0, 12, int(rng.integers(0, 3))).tolist())))
    small = [src.followed_keys(h, m, ignore=ig) for h, m, ig in cases]
    monkeypatch.setattr(src, "SMALL_HISTORY", 0)
    big = [src.followed_keys(h, m, ignore=ig) for h, m, ig in cases]
    for a, b in zip(small, big):
        assert a.dtype == b.dtype == np.int64
        np.testing.assert_array_equal(a, b)
