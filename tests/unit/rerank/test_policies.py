"""Property tests: the output is a duplicate-free subset of the input, seen items never
return, category caps hold whenever the input allows, order of kept items is preserved."""

from hypothesis import given, settings
from hypothesis import strategies as st

from feedrank.rerank.policies import RerankPolicy, apply_policy, cap_per_category

lists = st.lists(st.tuples(st.integers(0, 30), st.sampled_from("abcd")), min_size=0, max_size=60)


@settings(max_examples=200, deadline=None)
@given(lists, st.sets(st.integers(0, 30)), st.integers(1, 20), st.integers(1, 5))
def test_apply_policy_properties(rows, seen_ints, k, cap):
    item_ids = [f"i{r[0]}" for r in rows]
    cats = [r[1] for r in rows]
    seen = {f"i{s}" for s in seen_ints}
    order = list(range(len(rows)))
    out = apply_policy(order, item_ids, cats, seen, k, RerankPolicy(max_per_category=cap, drop_seen=True))
    assert len(out) <= k
    assert set(out) <= set(order)
    assert len({item_ids[i] for i in out}) == len(out)          # no duplicate items
    assert not any(item_ids[i] in seen for i in out)             # seen never returns
    eligible = {item_ids[i]: i for i in reversed(order) if item_ids[i] not in seen}
    assert len(out) == min(k, len(eligible))                     # fills when it can
    over = [c for c in set(cats) if sum(cats[i] == c for i in out) > cap]
    if over:  # caps only break when the other categories ran out
        capped = sum(min(cap, sum(1 for i in eligible.values() if cats[i] == c)) for c in set(cats))
        assert capped < len(out)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from("ab"), max_size=30), st.integers(1, 10))
def test_cap_keeps_relative_order(cats, k):
    out = cap_per_category(list(range(len(cats))), cats, 2, k)
    assert len(out) == min(k, len(cats))
    assert len(set(out)) == len(out)
    # items within the cap come first, in input order; top-ups follow, in input order
    head = [i for i in out if sum(cats[j] == cats[i] for j in out[: out.index(i) + 1]) <= 2]
    tail = out[len(head):]
    assert out[: len(head)] == head and head == sorted(head) and tail == sorted(tail)


def test_cap_example():
    cats = ["a", "a", "a", "b", "a"]
    assert cap_per_category([0, 1, 2, 3, 4], cats, 2, 3) == [0, 1, 3]
    assert cap_per_category([0, 1, 2, 3, 4], cats, 2, 5) == [0, 1, 3, 2, 4]
