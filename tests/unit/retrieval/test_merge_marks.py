"""``merge_sources`` through per-thread row stamps equals the per-item reference, across merges in one thread (stamps are never cleared) and in threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import feedrank.retrieval.sources as src
from feedrank.retrieval.sources import SourceResult, merge_sources
from feedrank.retrieval.sources_reference import merge_sources_reference

NAMES = ["ann", "fresh", "followed", "trending", "popular"]
FALLBACKS = ("trending", "popular")


def _case(rng: np.random.Generator, n_rows: int = 90):
    sizes = {n: int(rng.integers(0, 70)) for n in NAMES if rng.random() < 0.85}
    results = [SourceResult(n, rng.integers(0, n_rows, size=k).astype(np.int64), rng.random(k).astype(np.float32))
               for n, k in sizes.items()]
    quotas = {n: int(rng.integers(0, 30)) for n in NAMES if rng.random() < 0.9}
    total = int(rng.integers(0, 130))
    exclude = set(rng.integers(0, n_rows, size=int(rng.integers(0, 12))).tolist()) or None
    return results, quotas, total, exclude


def _same(a, b) -> None:
    assert a.items.tolist() == b.items.tolist() and a.sources == b.sources
    assert a.scores.tolist() == b.scores.tolist() and a.taken == b.taken
    assert a.items.dtype == b.items.dtype == np.int64 and a.scores.dtype == b.scores.dtype == np.float32


def test_stamped_merge_equals_the_reference_over_many_merges():
    rng = np.random.default_rng(7)
    for _ in range(300):  # one thread: each merge's token must ignore every earlier merge's stamps
        results, quotas, total, exclude = _case(rng)
        got = merge_sources(results, quotas, total, fallbacks=FALLBACKS, exclude=exclude)
        _same(got, merge_sources_reference(results, quotas, total, FALLBACKS, exclude))


def test_stamps_grow_with_larger_rows_and_odd_rows_are_renumbered():
    big = SourceResult("ann", np.array([5, 2_000_000, 5, 7], dtype=np.int64), np.arange(4, dtype=np.float32))
    pop = SourceResult("popular", np.array([7, 9, 2_000_000], dtype=np.int64), np.zeros(3, dtype=np.float32))
    got = merge_sources([big, pop], {"ann": 3, "popular": 5}, 10, fallbacks=("popular",), exclude={9})
    assert got.items.tolist() == [5, 2_000_000, 7] and got.sources == ["ann"] * 3
    neg = SourceResult("ann", np.array([3, -4, 3, 8], dtype=np.int64), np.arange(4, dtype=np.float32))
    _same(merge_sources([neg], {"ann": 4}, 4), merge_sources_reference([neg], {"ann": 4}, 4))
    huge = SourceResult("trending", np.array([1 << 40, -1, 6], dtype=np.int64), np.ones(3, dtype=np.float32))
    args = ([neg, huge, pop], {"ann": 2, "trending": 2, "popular": 1}, 7)
    _same(merge_sources(*args, fallbacks=("popular", "ann"), exclude={8, -1}),
          merge_sources_reference(*args, fallbacks=("popular", "ann"), exclude={8, -1}))
    assert merge_sources([neg], {"ann": 4}, 4).items.tolist() == [3, -4, 8]


def test_token_wraps_around(monkeypatch):
    marks = src._Marks()
    monkeypatch.setattr(src, "_MARKS", marks)
    rng = np.random.default_rng(1)
    results, quotas, total, exclude = _case(rng)
    want = merge_sources_reference(results, quotas, total, FALLBACKS, exclude)
    _same(merge_sources(results, quotas, total, fallbacks=FALLBACKS, exclude=exclude), want)
    marks.token = np.iinfo(np.int32).max - 1  # the next merge restarts at token 1 over cleared stamps
    for _ in range(3):
        _same(merge_sources(results, quotas, total, fallbacks=FALLBACKS, exclude=exclude), want)
    assert marks.token == 3


@pytest.mark.parametrize("n_threads", [4])
def test_threads_merge_independently(n_threads: int):
    cases = [_case(np.random.default_rng(100 + t)) for t in range(n_threads)]
    wants = [merge_sources_reference(r, q, t, FALLBACKS, e) for r, q, t, e in cases]
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(j: int) -> None:
        try:
            barrier.wait()
            for _ in range(200):
                r, q, t, e = cases[j]
                _same(merge_sources(r, q, t, fallbacks=FALLBACKS, exclude=e), wants[j])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
