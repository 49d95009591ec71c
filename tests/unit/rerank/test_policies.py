"""Property tests for the pure re-ranking policies: outputs are duplicate-free subsets of
the input, seen and blocked items never return, caps and exposure floors hold whenever
the input allows, exploration propensities are what the policy really did."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from feedrank.rerank.diversity import cap_per_key, mmr
from feedrank.rerank.explore import exploration_slot
from feedrank.rerank.fairness import exposure_floor
from feedrank.rerank.filters import Blocklist, apply_blocklist
from feedrank.rerank.policies import RerankPolicy, Slate, cap_per_category, rerank

rows = st.lists(st.tuples(st.integers(0, 30), st.sampled_from("abcd"), st.sampled_from("xyz"), st.sampled_from(["new", "old"])),
                min_size=0, max_size=60)


def _slate(rs):
    n = len(rs)
    vec = np.random.default_rng(0).standard_normal((max(n, 1), 4)).astype(np.float32)[:n]
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)
    return Slate(item_ids=[f"i{r[0]}" for r in rs], categories=[r[1] for r in rs], creators=[r[2] for r in rs],
                 groups=[r[3] for r in rs], scores=np.linspace(1, 0, n), vectors=vec)


@settings(max_examples=200, deadline=None)
@given(rows, st.sets(st.integers(0, 30)), st.sets(st.integers(0, 30)), st.integers(1, 20), st.integers(1, 5),
       st.floats(0.0, 1.0), st.floats(0.0, 0.99), st.integers(0, 1000))
def test_rerank_properties(rs, seen_ints, blocked_ints, k, cap, lam, u, pick):
    slate = _slate(rs)
    seen = {f"i{s}" for s in seen_ints}
    blocked = frozenset(f"i{b}" for b in blocked_ints)
    policy = RerankPolicy(max_per_category=cap, max_per_creator=cap + 1, mmr_lambda=lam, explore_epsilon=0.3,
                          explore_position=2, fairness_min_share=0.2, blocklist=Blocklist(items=blocked))
    out, props = rerank(slate, list(range(len(rs))), seen, k, policy, u=u, pick=pick)
    ids = [slate.item_ids[i] for i in out]
    assert len(out) == len(props) <= k
    assert set(out) <= set(range(len(rs)))
    assert len(set(ids)) == len(ids)                       # no duplicate items
    assert not (set(ids) & seen) and not (set(ids) & blocked)
    eligible = {slate.item_ids[i] for i in range(len(rs))} - seen - blocked
    assert len(out) == min(k, len(eligible))               # fills whenever it can
    assert all(0 < p <= 1 for p in props)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from("ab"), max_size=30), st.integers(1, 10))
def test_caps_keep_relative_order(keys, k):
    out = cap_per_key(list(range(len(keys))), keys, 2, k)
    assert len(out) == min(k, len(keys)) and len(set(out)) == len(out)
    head = [i for i in out if sum(keys[j] == keys[i] for j in out[: out.index(i) + 1]) <= 2]
    tail = out[len(head):]
    assert out[: len(head)] == head and head == sorted(head) and tail == sorted(tail)


def test_cap_example():
    cats = ["a", "a", "a", "b", "a"]
    assert cap_per_category([0, 1, 2, 3, 4], cats, 2, 3) == [0, 1, 3]
    assert cap_per_category([0, 1, 2, 3, 4], cats, 2, 5) == [0, 1, 3, 2, 4]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["new", "old"]), min_size=1, max_size=40), st.integers(1, 15), st.floats(0.05, 1.0))
def test_exposure_floor_holds_when_possible(groups, k, share):
    order = list(range(len(groups)))
    out = exposure_floor(order, groups, "new", share, k)
    assert sorted(out) == order                            # a permutation of the input
    top = out[:k]
    want = math.ceil(share * min(k, len(order)))
    assert sum(groups[i] == "new" for i in top) >= min(want, groups.count("new"))
    # protected entries already in the top keep their places relative to each other
    assert [i for i in top if groups[i] == "new"] == sorted(i for i in top if groups[i] == "new")


def test_exposure_floor_example():
    groups = ["old", "old", "old", "new", "new"]
    assert exposure_floor([0, 1, 2, 3, 4], groups, "new", 0.5, 4) == [0, 1, 3, 4, 2]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=40, unique=True), st.integers(1, 10), st.floats(0.0, 1.0))
def test_mmr_is_a_permutation_and_lambda_one_is_identity(ids, k, lam):
    n = len(ids)
    rng = np.random.default_rng(1)
    vec = rng.standard_normal((n, 3)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    scores = rng.random(n)
    order = list(np.argsort(-scores))
    out = mmr(order, scores, vec, k, lam)
    assert sorted(out) == sorted(order)
    assert mmr(order, scores, vec, n, 1.0) == order


def test_mmr_prefers_novel_items():
    # items 0 and 1 are near duplicates, 2 is different: with diversity on, 2 comes second
    vec = np.array([[1, 0], [0.999, 0.045], [0, 1]], dtype=np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    scores = np.array([1.0, 0.95, 0.8])
    assert mmr([0, 1, 2], scores, vec, 3, 1.0) == [0, 1, 2]
    assert mmr([0, 1, 2], scores, vec, 3, 0.5) == [0, 2, 1]


def test_exploration_propensities():
    top, pool = [0, 1, 2, 3], [7, 8, 9, 10]
    out, props = exploration_slot(top, pool, position=2, epsilon=0.2, u=0.1, pick=5)
    assert out == [0, 1, 8, 3] and props == [1.0, 1.0, 0.2 / 4, 1.0]
    out, props = exploration_slot(top, pool, position=2, epsilon=0.2, u=0.5, pick=5)
    assert out == top and props == [1.0, 1.0, 0.8, 1.0]
    assert exploration_slot(top, [], 2, 0.2, 0.0, 0) == (top, [1.0] * 4)


def test_exploration_rate_matches_epsilon():
    rng = np.random.default_rng(0)
    hits = sum(exploration_slot([0, 1, 2], [5, 6], 1, 0.1, float(rng.random()), 0)[0][1] != 1 for _ in range(20000))
    assert abs(hits / 20000 - 0.1) < 0.01


def test_blocklist_filters_all_three_kinds():
    ids, creators, cats = ["a", "b", "c", "d"], ["x", "y", "x", "z"], ["s", "s", "t", "u"]
    bl = Blocklist(items=frozenset({"a"}), creators=frozenset({"y"}), categories=frozenset({"u"}))
    assert apply_blocklist([0, 1, 2, 3], ids, creators, cats, bl) == [2]
    assert apply_blocklist([0, 1], ids, creators, cats, Blocklist()) == [0, 1]
    import pytest

    from feedrank.errors import SchemaError

    with pytest.raises(SchemaError) as exc:
        Blocklist.from_dict({"items": "a", "nope": []})
    assert len(exc.value.problems) == 2


@settings(max_examples=200, deadline=None)
@given(rows, st.integers(1, 12), st.integers(1, 4), st.integers(1, 4), st.floats(0.0, 1.0))
def test_caps_hold_whenever_enough_items_satisfy_them(rs, k, cat_cap, cr_cap, share):
    slate = _slate(rs)
    policy = RerankPolicy(max_per_category=cat_cap, max_per_creator=cr_cap, fairness_min_share=share, explore_epsilon=0.0)
    out, _ = rerank(slate, list(range(len(rs))), set(), k, policy)
    from feedrank.rerank.diversity import cap_split

    firsts = [i for i in range(len(rs)) if slate.item_ids.index(slate.item_ids[i]) == i]  # after dedupe
    kept, _ = cap_split(firsts, [(slate.categories, cat_cap), (slate.creators, cr_cap)])
    if len(kept) >= k:  # enough items satisfy both caps: the feed never breaks them
        from collections import Counter

        assert max(Counter(slate.categories[i] for i in out).values(), default=0) <= cat_cap
        assert max(Counter(slate.creators[i] for i in out).values(), default=0) <= cr_cap


@settings(max_examples=200, deadline=None)
@given(rows, st.integers(2, 12), st.integers(1, 3), st.floats(0.0, 0.99), st.integers(0, 1000))
def test_exploration_never_breaks_a_cap_that_held(rs, k, cap, u, pick):
    from collections import Counter

    slate = _slate(rs)
    base = RerankPolicy(max_per_category=cap, max_per_creator=cap, explore_epsilon=0.0)
    explore = RerankPolicy(max_per_category=cap, max_per_creator=cap, explore_epsilon=0.9, explore_position=1)
    plain, _ = rerank(slate, list(range(len(rs))), set(), k, base)
    out, _ = rerank(slate, list(range(len(rs))), set(), k, explore, u=u, pick=pick)
    for keys in (slate.categories, slate.creators):
        if max(Counter(keys[i] for i in plain).values(), default=0) <= cap:
            assert max(Counter(keys[i] for i in out).values(), default=0) <= cap


def test_caps_hold_when_the_best_candidates_crowd_one_category():
    # 300 candidates: the best 250 are all travel, the rest spread over other categories
    n = 300
    cats = ["travel"] * 250 + [f"c{i % 10}" for i in range(50)]
    slate = Slate(item_ids=[f"i{i}" for i in range(n)], categories=cats, creators=[f"cr{i}" for i in range(n)],
                  groups=["old"] * n, scores=np.linspace(1, 0, n))
    out, _ = rerank(slate, list(range(n)), set(), 10, RerankPolicy(max_per_category=3, explore_epsilon=0.0))
    from collections import Counter

    assert len(out) == 10 and max(Counter(cats[i] for i in out).values()) == 3


def _two_pass_reference(slate, order, seen, k, policy):
    """What ``rerank`` did before the one-pass form: eligible + caps re-run on a 4x window."""
    from feedrank.rerank.diversity import cap_split
    from feedrank.rerank.policies import MIN_WINDOW, WINDOW_PER_K, eligible

    window = max(WINDOW_PER_K * k, MIN_WINDOW)
    while True:
        out = eligible(order, slate, seen, policy, limit=window)
        kept, skipped = cap_split(out, [(slate.categories, policy.max_per_category), (slate.creators, policy.max_per_creator)])
        if len(kept) >= 2 * k or len(out) < window:
            return kept, skipped
        window *= 4


def test_one_pass_eligible_and_caps_equal_the_two_pass_reference():
    from feedrank.rerank.policies import _eligible_capped

    rng = np.random.default_rng(0)
    for _ in range(300):  # random slates, many long enough to widen the window (80 -> 320 -> ...)
        n = int(rng.integers(0, 700))
        n_cats, n_creators = int(rng.integers(1, 15)), int(rng.integers(1, 40))
        ids, cats, creators = rng.integers(0, 500, n), rng.integers(0, n_cats, n), rng.integers(0, n_creators, n)
        slate = Slate(item_ids=[f"i{x}" for x in ids], categories=[f"c{x}" for x in cats],
                      creators=[f"cr{x}" for x in creators], groups=["old"] * n, scores=np.linspace(1, 0, n))
        seen = {f"i{x}" for x in rng.integers(0, 500, int(rng.integers(0, 200)))}
        k = int(rng.integers(1, 40))
        policy = RerankPolicy(max_per_category=int(rng.integers(0, 4)), max_per_creator=int(rng.integers(0, 4)),
                              blocklist=Blocklist(creators=frozenset({"cr4"})))
        order = rng.permutation(n).tolist()
        window = max(8 * k, 80)
        assert _eligible_capped(order, slate, seen, policy, k, window) == _two_pass_reference(slate, order, seen, k, policy)
    # the caps fill only after the first window: the 4x wider one decides what is skipped
    n = 400
    cats = [f"c{i % 5}" for i in range(80)] + [f"d{i}" for i in range(n - 80)]
    slate = Slate(item_ids=[f"i{i}" for i in range(n)], categories=cats, creators=[f"cr{i}" for i in range(n)],
                  groups=["old"] * n, scores=np.linspace(1, 0, n))
    policy = RerankPolicy(max_per_category=3, max_per_creator=2)
    kept, skipped = _eligible_capped(list(range(n)), slate, set(), policy, 10, 80)
    assert (kept, skipped) == _two_pass_reference(slate, list(range(n)), set(), 10, policy)
    assert len(kept) + len(skipped) == 320


def test_one_pass_with_unique_ids_equals_the_two_pass_reference():
    """Unique item ids and positions take the list-comprehension filter (then the caps
    window by window); it must give what the per-entry loop of the reference gives."""
    from feedrank.rerank.policies import _eligible_capped

    rng = np.random.default_rng(5)
    hit = 0
    for _ in range(300):
        n = int(rng.integers(0, 700))
        n_cats, n_creators = int(rng.integers(1, 6)), int(rng.integers(1, 400))
        cats, creators = rng.integers(0, n_cats, n), rng.integers(0, n_creators, n)
        slate = Slate(item_ids=[f"i{x}" for x in rng.permutation(n)], categories=[f"c{x}" for x in cats],
                      creators=[f"cr{x}" for x in creators], groups=["old"] * n, scores=np.linspace(1, 0, n))
        seen = {f"i{x}" for x in rng.integers(0, max(n, 1), int(rng.integers(0, 100)))} if rng.random() < 0.5 else set()
        blocked = Blocklist(creators=frozenset({"cr4"}), categories=frozenset({"c9"})) if rng.random() < 0.5 else Blocklist()
        k = int(rng.integers(1, 40))
        policy = RerankPolicy(max_per_category=int(rng.integers(0, 4)), max_per_creator=int(rng.integers(1, 4)),
                              blocklist=blocked)
        order = rng.permutation(n).tolist()
        got = _eligible_capped(order, slate, seen, policy, k, max(8 * k, 80))
        assert got == _two_pass_reference(slate, order, seen, k, policy)
        hit += len(got[1]) > 0
    assert hit > 100  # entries were skipped by the caps in most slates


def test_exploration_slot_is_the_same_with_a_lazy_pool():
    """Without a draw (u >= epsilon) rerank only checks that a cap-safe pool exists; the
    result equals computing the whole pool, for draws and non-draws alike."""
    from feedrank.rerank.policies import _cap_safe_pool, _eligible_capped

    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(0, 120))
        slate = Slate(item_ids=[f"i{x}" for x in range(n)], categories=[f"c{x}" for x in rng.integers(0, 6, n)],
                      creators=[f"cr{x}" for x in rng.integers(0, 8, n)], groups=["old"] * n, scores=np.linspace(1, 0, n))
        policy = RerankPolicy(max_per_category=int(rng.integers(1, 4)), max_per_creator=int(rng.integers(1, 3)),
                              explore_epsilon=0.3, explore_position=int(rng.integers(0, 6)))
        k, u, pick = int(rng.integers(1, 15)), float(rng.random()), int(rng.integers(0, 1000))
        got = rerank(slate, list(range(n)), set(), k, policy, u=u, pick=pick)
        kept, skipped = _eligible_capped(list(range(n)), slate, set(), policy, k, max(8 * k, 80))
        out = kept + skipped  # what rerank splits into the top k and the exploration pool
        top, rest = out[:k], out[k:]
        pool = _cap_safe_pool(top, rest, policy.explore_position, slate, policy) if policy.explore_position < len(top) else []
        assert got == exploration_slot(top, pool, policy.explore_position, policy.explore_epsilon, u, pick)
