"""``RescorePool.top`` (the served rescoring with the pool's vectors gathered once) against the
straightforward computation: gather the sorted union of ANN rows and pool, rescore it. The
same rows in the same order; scores equal up to float32 rounding of the dot products."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.retrieval.counters import ItemCounters
from feedrank.retrieval.prior import AgePrior, rescore_with_prior
from feedrank.retrieval.served import RescorePool, served_top

N, D = 3000, 16


def _world(seed: int):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((N, D)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pub = rng.uniform(0.0, 5 * 86400.0, N)
    pub[rng.integers(0, N, 20)] = np.nan  # unknown publish times
    clicks = rng.poisson(2.0, N).astype(np.float64)
    return rng, vecs, pub, clicks


def _reference(prior, u, ann, parts, vecs, pub, now, k, clicks=None, counters=None, past=None, has_history=True):
    cand = np.union1d(ann[ann >= 0].astype(np.int64), np.concatenate(parts).astype(np.int64))
    if past is not None and len(past):
        cand = cand[~np.isin(cand, past)]
    return rescore_with_prior(prior, u, cand, vecs[cand], pub[cand], now, k,
                              clicks=None if clicks is None else clicks[cand],
                              counters=None if counters is None else counters.take(cand), has_history=has_history)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_equals_rescoring_the_gathered_union(seed):
    rng, vecs, pub, clicks = _world(seed)
    prior = AgePrior(weight=0.4, temperature=0.07, ref_ts=0.0, pop_weight=0.3)
    newest = np.argsort(-np.nan_to_num(pub, nan=-1.0))[:400]          # newest first, unsorted rows
    popular = rng.choice(N, 60, replace=False)                          # overlaps newest sometimes
    pool = RescorePool.build((newest, popular), vecs, pub)
    for j in range(20):
        u = vecs[rng.integers(N)]
        ann = rng.choice(N, 150, replace=False)
        ann[:30] = newest[rng.integers(0, 400, 30)]                     # ANN hits inside the pool
        ann[-5:] = -1                                                   # FAISS padding
        now = 5 * 86400.0 + j * 60.0
        got, s = pool.top(prior, u, ann, vecs, pub, now, 100, clicks=clicks)
        want, ws = _reference(prior, u, ann, (newest, popular), vecs, pub, now, 100, clicks=clicks)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(s, ws, rtol=1e-6, atol=1e-6)


def test_top_with_counters_past_and_cold_users_matches_served_top_reference():
    rng, vecs, pub, clicks = _world(7)
    cold = AgePrior(weight=0.1, temperature=0.07, ref_ts=0.0, pop_weight=0.8, tower_weight=0.5)
    prior = AgePrior(weight=0.3, temperature=0.07, ref_ts=0.0, ctr_weight=0.5, ctr0=0.05, cold_user=cold)
    counters = ItemCounters(clicks=clicks, impressions=clicks * 10 + rng.poisson(5.0, N))
    pool_rows = np.sort(rng.choice(N, 500, replace=False))
    for has_history in (True, False):
        u = vecs[rng.integers(N)]
        ann = rng.choice(N, 200, replace=False)
        past = ann[:10]
        got = served_top(prior, u, ann, pool_rows, vecs, pub, 4 * 86400.0, 50, counters, past, has_history=has_history)
        want, _ = _reference(prior, u, ann, (pool_rows,), vecs, pub, 4 * 86400.0, 50, counters=counters, past=past,
                             has_history=has_history)
        np.testing.assert_array_equal(got, want)
        assert not np.isin(got, past).any()


def test_empty_pool_empty_ann_and_same():
    rng, vecs, pub, clicks = _world(3)
    prior = AgePrior(weight=0.4, temperature=0.07, ref_ts=0.0)
    empty = RescorePool.build((np.zeros(0, dtype=np.int64),), vecs, pub)
    ann = rng.choice(N, 40, replace=False)
    got, _ = empty.top(prior, vecs[0], ann, vecs, pub, 86400.0, 10)
    want, _ = _reference(prior, vecs[0], ann, (np.zeros(0, dtype=np.int64),), vecs, pub, 86400.0, 10)
    np.testing.assert_array_equal(got, want)
    got, s = empty.top(prior, vecs[0], np.full(5, -1), vecs, pub, 86400.0, 10)
    assert len(got) == len(s) == 0
    rows = np.array([5, 3, 9])
    pool = RescorePool.build((rows,), vecs, pub)
    assert pool.rows.tolist() == [3, 5, 9] and pool.same((np.array([5, 3, 9]),))
    assert not pool.same((np.array([3, 5, 9]),)) and not pool.same((rows, rows)) and not pool.same((rows[:2],))
    rows[0] = 7  # the pool keeps its own copy of what it was made from
    assert pool.same((np.array([5, 3, 9]),))


def test_scratch_reuse_across_sizes_and_threads_gives_fresh_results():
    """The per-thread scratch buffer (pool rows + this request's ANN rows) is reused and
    regrown across calls of changing ANN sizes, and two threads never see each other's rows."""
    import threading

    rng, vecs, pub, clicks = _world(11)
    prior = AgePrior(weight=0.2, temperature=0.07, ref_ts=0.0, pop_weight=0.1)
    newest = np.argsort(-np.nan_to_num(pub, nan=-1.0))[:300]
    pool = RescorePool.build((newest,), vecs, pub)
    sizes = [40, 1500, 7, 2500, 600, 2]
    cases = [(vecs[rng.integers(N)], rng.choice(N, n, replace=False)) for n in sizes * 3]
    wants = [_reference(prior, u, ann, (newest,), vecs, pub, 5 * 86400.0, 50, clicks=clicks) for u, ann in cases]
    errors: list[BaseException] = []

    def run(order):
        try:
            for i in order:
                u, ann = cases[i]
                got, s = pool.top(prior, u, ann, vecs, pub, 5 * 86400.0, 50, clicks=clicks)
                np.testing.assert_array_equal(got, wants[i][0])
                np.testing.assert_allclose(s, wants[i][1], rtol=1e-6, atol=1e-6)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(list(range(len(cases)))[::step],)) for step in (1, -1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
