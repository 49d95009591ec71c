"""Metrics against brute-force loop references, hand-computed examples and properties."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedrank.errors import SchemaError
from feedrank.evaluation.metrics import (
    auc,
    coverage,
    expected_calibration_error,
    gauc,
    hit_rate_at_k,
    impression_metrics,
    mrr,
    ndcg_at_k,
    ndcg_at_k_lists,
    recall_at_k,
)

# ----------------------------------------------------------------- brute-force references


def ref_auc(y, s):
    pos = [si for yi, si in zip(y, s) if yi]
    neg = [si for yi, si in zip(y, s) if not yi]
    if not pos or not neg:
        return float("nan")
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def ref_groups(y, s, g):
    out = defaultdict(list)
    for i, (yi, si, gi) in enumerate(zip(y, s, g)):
        out[gi].append((i, yi, si))
    return out


def ref_ranked(rows):
    """Rows of one group ranked by score desc, ties by input order -> labels in rank order."""
    return [yi for _, yi, _ in sorted(rows, key=lambda r: (-r[2], r[0]))]


def ref_gauc(y, s, g):
    num = den = 0.0
    for rows in ref_groups(y, s, g).values():
        a = ref_auc([r[1] for r in rows], [r[2] for r in rows])
        if not math.isnan(a):
            num += a * len(rows)
            den += len(rows)
    return num / den if den else float("nan")


def ref_mean_auc(y, s, g):
    vals = [ref_auc([r[1] for r in rows], [r[2] for r in rows]) for rows in ref_groups(y, s, g).values()]
    vals = [v for v in vals if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def ref_mrr(y, s, g, first_only=False):
    vals = []
    for rows in ref_groups(y, s, g).values():
        ranked = ref_ranked(rows)
        if not any(ranked):
            continue
        rr = [1.0 / (r + 1) for r, lab in enumerate(ranked) if lab]
        vals.append(rr[0] if first_only else sum(rr) / len(rr))
    return sum(vals) / len(vals) if vals else float("nan")


def ref_ndcg(y, s, g, k):
    vals = []
    for rows in ref_groups(y, s, g).values():
        ranked = ref_ranked(rows)
        n_pos = sum(ranked)
        if n_pos == 0:
            continue
        dcg = sum(lab / math.log2(r + 2) for r, lab in enumerate(ranked[:k]))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, n_pos)))
        vals.append(dcg / idcg)
    return sum(vals) / len(vals) if vals else float("nan")


def ref_list_metrics(retrieved, relevant, k):
    rec, hr, nd = [], [], []
    for lst, rel in zip(retrieved, relevant):
        rel = set(rel)
        if not rel:
            continue
        seen, hits, dcg = set(), 0, 0.0
        for r, item in enumerate(list(lst)[:k]):
            if item in rel and item not in seen:
                hits += 1
                dcg += 1 / math.log2(r + 2)
            seen.add(item)
        rec.append(hits / len(rel))
        hr.append(1.0 if hits else 0.0)
        nd.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(k, len(rel)))))
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    return mean(rec), mean(hr), mean(nd)


def ref_ece(y, p, n_bins):
    bins = defaultdict(list)
    for yi, pi in zip(y, p):
        bins[min(int(pi * n_bins), n_bins - 1)].append((yi, pi))
    total = 0.0
    for rows in bins.values():
        total += len(rows) / len(y) * abs(sum(r[0] for r in rows) / len(rows) - sum(r[1] for r in rows) / len(rows))
    return total


def same(a, b, tol=1e-9):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


# ----------------------------------------------------------------- hand-computed examples


def test_auc_hand_example_with_tie():
    # positives .9 and .5, negatives .1 and .5: wins 1 + 1 + 1 + 0.5 of 4 pairs
    assert auc([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.5]) == pytest.approx(0.875)


def test_auc_all_tied_is_half():
    assert auc([0, 1, 1, 0, 1], [3.0] * 5) == pytest.approx(0.5)


def test_auc_single_class_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([False, False], [0.1, 0.2]))


def test_gauc_hand_example():
    # group a: 3 rows, AUC 1; group b: 2 rows, AUC 0; group c: single class, left out
    y = [1, 0, 0, 1, 0, 1, 1]
    s = [0.9, 0.1, 0.2, 0.1, 0.9, 0.5, 0.6]
    g = ["a", "a", "a", "b", "b", "c", "c"]
    assert gauc(y, s, g) == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)
    m = impression_metrics(y, s, g)
    assert m["auc"] == pytest.approx(0.5)  # unweighted mean of 1 and 0
    assert m["gauc"] == pytest.approx(0.6)
    assert (m["n_groups"], m["n_groups_auc"], m["n_groups_ranking"], m["n_rows"]) == (3, 2, 3, 7)


def test_mrr_and_ndcg_hand_example():
    # one impression ranked [pos, neg, pos]: MIND mrr = (1 + 1/3) / 2, first-only = 1
    y, s, g = [1, 0, 1], [0.9, 0.5, 0.1], [7, 7, 7]
    assert mrr(y, s, g) == pytest.approx((1 + 1 / 3) / 2)
    assert mrr(y, s, g, first_only=True) == pytest.approx(1.0)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert ndcg_at_k(y, s, g, 3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(y, s, g, 1) == pytest.approx(1.0)
    assert ndcg_at_k(y, s, g, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_ranking_ties_broken_by_input_order():
    # equal scores: the earlier row ranks first
    assert mrr([0, 1], [0.5, 0.5], [1, 1]) == pytest.approx(0.5)
    assert mrr([1, 0], [0.5, 0.5], [1, 1]) == pytest.approx(1.0)


def test_groups_without_positive_are_excluded_from_ranking():
    y = [0, 0, 1, 0]
    s = [0.9, 0.1, 0.2, 0.8]
    g = ["x", "x", "y", "y"]
    assert mrr(y, s, g) == pytest.approx(0.5)
    assert math.isnan(mrr([0, 0], [0.1, 0.2], [1, 1]))
    assert math.isnan(ndcg_at_k([0, 0], [0.1, 0.2], [1, 2], 5))


def test_list_metrics_hand_example():
    retrieved = [["a", "b", "c"], ["d", "e"], ["x"]]
    relevant = [{"a", "z"}, {"e"}, set()]  # third user has nothing relevant: excluded
    assert recall_at_k(retrieved, relevant, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert hit_rate_at_k(retrieved, relevant, 1) == pytest.approx(0.5)
    nd_u1 = 1.0 / (1 + 1 / math.log2(3))
    nd_u2 = (1 / math.log2(3)) / 1.0
    assert ndcg_at_k_lists(retrieved, relevant, 2) == pytest.approx((nd_u1 + nd_u2) / 2)


def test_list_metrics_2d_array_pad_and_duplicates():
    retrieved = np.array([[5, 5, -1, 3], [1, 2, 3, 4]])
    relevant = [{5, 3}, {9}]
    # user 0: 5 counted once, pad ignored, 3 hits at rank 4; user 1: no hit
    assert recall_at_k(retrieved, relevant, 4, pad=-1) == pytest.approx((1.0 + 0.0) / 2)
    assert recall_at_k(retrieved, relevant, 2, pad=-1) == pytest.approx((0.5 + 0.0) / 2)
    dcg = 1 + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert ndcg_at_k_lists(retrieved, relevant, 4, pad=-1) == pytest.approx(dcg / idcg / 2)


def test_list_metrics_ids_of_different_types_do_not_match():
    assert recall_at_k([[1, 2]], [{"1"}], 2) == 0.0


def test_coverage():
    assert coverage([[1, 2], [2, 3]], 10) == pytest.approx(0.3)
    assert coverage([[1, 2], [2, 3]], 10, k=1) == pytest.approx(0.2)
    assert coverage(np.array([[1, -1], [-1, -1]]), 4, pad=-1) == pytest.approx(0.25)
    assert coverage([[], []], 5) == 0.0


def test_ece_hand_example():
    # two bins of [0,0.5) / [0.5,1]: bin0 probs .2,.2 labels 0,1 -> |.5-.2|; bin1 prob .8 label 1 -> .2
    y, p = [0, 1, 1], [0.2, 0.2, 0.8]
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx((2 / 3) * 0.3 + (1 / 3) * 0.2)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == pytest.approx(0.0)


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call",
    [
        lambda: auc([], []),
        lambda: auc([0, 1], [0.1, float("nan")]),
        lambda: auc([0, 1, 2], [0.1, 0.2, 0.3]),
        lambda: auc([0, 1], [0.1]),
        lambda: auc([[0, 1]], [[0.1, 0.2]]),
        lambda: gauc([0, 1], [0.1, 0.2], [1]),
        lambda: gauc([0, 1], [0.1, 0.2], ["a", None]),
        lambda: mrr([], [], []),
        lambda: ndcg_at_k([0, 1], [0.1, 0.2], [1, 1], 0),
        lambda: impression_metrics([0, 1], [np.nan, 0.2], [1, 1]),
        lambda: recall_at_k([], [], 5),
        lambda: recall_at_k([[1]], [{1}, {2}], 5),
        lambda: recall_at_k([[1]], [{1}], 0),
        lambda: coverage([[1]], 0),
        lambda: coverage([], 10),
        lambda: expected_calibration_error([0, 1], [0.5, 1.5]),
        lambda: expected_calibration_error([0, 1], [0.5, 0.5], n_bins=0),
        lambda: expected_calibration_error([], []),
    ],
)
def test_bad_input_raises_schema_error(call):
    with pytest.raises(SchemaError):
        call()


def test_empty_input_message_is_clear():
    with pytest.raises(SchemaError, match="empty"):
        auc([], [])


# ----------------------------------------------------------------- random vs reference


@pytest.mark.parametrize("seed", range(8))
def test_grouped_metrics_match_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    y = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
    s = rng.integers(0, 6, n) / 5.0  # coarse: many ties
    g = rng.integers(0, max(1, n // 6), n).astype(str)
    assert same(auc(y, s), ref_auc(y, s))
    assert same(gauc(y, s, g), ref_gauc(y, s, g))
    assert same(mrr(y, s, g), ref_mrr(y, s, g))
    assert same(mrr(y, s, g, first_only=True), ref_mrr(y, s, g, first_only=True))
    for k in (1, 3, 10):
        assert same(ndcg_at_k(y, s, g, k), ref_ndcg(y, s, g, k))
    m = impression_metrics(y, s, g)
    assert same(m["auc"], ref_mean_auc(y, s, g))
    assert same(m["gauc"], ref_gauc(y, s, g))
    assert same(m["mrr"], ref_mrr(y, s, g))
    assert same(m["ndcg@5"], ref_ndcg(y, s, g, 5))
    assert same(m["ndcg@10"], ref_ndcg(y, s, g, 10))


@pytest.mark.parametrize("seed", range(6))
def test_list_metrics_match_reference(seed):
    rng = np.random.default_rng(seed)
    n_users = int(rng.integers(1, 30))
    retrieved = [rng.integers(0, 25, int(rng.integers(0, 15))).tolist() for _ in range(n_users)]
    relevant = [set(rng.integers(0, 25, int(rng.integers(0, 5))).tolist()) for _ in range(n_users)]
    for k in (1, 5, 20):
        rec, hr, nd = ref_list_metrics(retrieved, relevant, k)
        assert same(recall_at_k(retrieved, relevant, k), rec)
        assert same(hit_rate_at_k(retrieved, relevant, k), hr)
        assert same(ndcg_at_k_lists(retrieved, relevant, k), nd)


@pytest.mark.parametrize("seed", range(4))
def test_ece_matches_reference(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(200)
    p[:5] = [0.0, 1.0, 0.5, 1 / 15, 14 / 15]
    y = (rng.random(200) < p).astype(int)
    for b in (1, 10, 15):
        assert expected_calibration_error(y, p, b) == pytest.approx(ref_ece(y, p, b))


# ----------------------------------------------------------------- properties

scores_st = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=60)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=2, max_size=60).filter(lambda v: 0 < sum(v) < len(v)))
def test_auc_perfect_and_reversed(y):
    y = np.array(y)
    s = y.astype(float) + np.linspace(0, 0.5, len(y))
    assert auc(y, s) == 1.0
    assert auc(y, -s) == 0.0


@settings(max_examples=60, deadline=None)
@given(scores_st, st.randoms(use_true_random=False))
def test_auc_invariant_to_monotone_transform(s, rnd):
    s = np.array(s)
    y = np.array([rnd.random() < 0.5 for _ in s])
    a = auc(y, s)
    dense = np.unique(s, return_inverse=True)[1].astype(float)  # order- and tie-preserving
    b = auc(y, np.exp(dense / len(s)) * 3 - 7)  # strictly increasing in the dense rank
    c = auc(y, 4.0 * s)  # exact in floating point
    assert same(a, b, 1e-12) and same(a, c, 1e-12)
    if not math.isnan(a):
        assert 0.0 <= a <= 1.0
        assert same(auc(y, -s), 1.0 - a, 1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(-10, 10, allow_nan=False), st.integers(0, 4)), min_size=1, max_size=50),
    st.integers(1, 12),
)
def test_ndcg_bounds_and_perfect_ordering(rows, k):
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows])
    g = np.array([r[2] for r in rows])
    v = ndcg_at_k(y, s, g, k)
    if y.any():
        assert -1e-12 <= v <= 1 + 1e-12
        assert ndcg_at_k(y, y.astype(float), g, k) == pytest.approx(1.0)
        assert mrr(y, y.astype(float), g) <= 1.0
    else:
        assert math.isnan(v)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20), max_size=8), min_size=1, max_size=10), st.integers(1, 10))
def test_list_ndcg_bounds_and_perfect_lists(relevant_lists, k):
    relevant = [set(r) for r in relevant_lists]
    perfect = [sorted(r) for r in relevant]
    if any(relevant):
        assert ndcg_at_k_lists(perfect, relevant, k) == pytest.approx(1.0)
        assert hit_rate_at_k(perfect, relevant, k) == pytest.approx(1.0)
        assert 0.0 <= recall_at_k(perfect, relevant, k) <= 1.0
        shuffled = [list(reversed(p)) + [99] for p in perfect]
        assert 0.0 <= ndcg_at_k_lists(shuffled, relevant, k) <= 1.0 + 1e-12


# ----------------------------------------------------------------- scale


def test_millions_of_rows():
    # vectorised over 100k groups (the docs' "about a second" is measured, not asserted:
    # tests check behaviour, and this machine is shared)
    rng = np.random.default_rng(0)
    n = 1_000_000
    y = rng.random(n) < 0.1
    s = rng.random(n) + 0.2 * y
    g = rng.integers(0, 100_000, n)
    m = impression_metrics(y, s, g)
    assert 0.6 < m["auc"] < 0.8 and m["n_rows"] == n and m["n_groups"] == len(np.unique(g))
