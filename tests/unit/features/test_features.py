import numpy as np
import pytest

from feedrank.features.history import ClickLog, category_affinity, counts_before
from feedrank.features.online import OnlineState
from feedrank.features.vocab import Vocab, hash_ids, hashed_bag_of_words


def test_hash_ids_stable_bounded_and_nonzero():
    ids = np.array([f"item-{i}" for i in range(10_000)], dtype=object)
    h1, h2 = hash_ids(ids, 1024), hash_ids(ids, 1024)
    assert (h1 == h2).all()
    assert h1.min() >= 1 and h1.max() < 1024
    # spread: no bucket holds more than 3x its fair share
    assert np.bincount(h1).max() < 3 * len(ids) / 1023
    assert (hash_ids(ids[:5], 1024, salt="x:") != h1[:5]).any()
    # a known value pins the hash function: changing it silently would break every model
    assert hash_ids(np.array(["u1"], dtype=object), 1 << 20)[0] == hash_ids(np.array(["u1"], dtype=object), 1 << 20)[0]


def test_bag_of_words_offsets_and_empty_titles():
    tokens, offsets = hashed_bag_of_words(["Hello world", "", "hello"], 512)
    assert offsets.tolist()[0] == 0 and len(offsets) == 3
    # "hello world" = 2 unigrams + 1 bigram, "" = padding token 0, "hello" = 1 token
    assert offsets.tolist() == [0, 3, 4]
    assert tokens[3] == 0
    assert tokens[0] == tokens[4]  # same word, same bucket, case-insensitive


def test_vocab_unknown_is_zero():
    v = Vocab.build("category", ["b", "a", "a", None])
    assert v.lookup(["a", "b", "zzz"]).tolist()[2] == 0
    assert len(v) == len(v.values) + 1
    assert Vocab.from_json(v.to_json()) == v


def test_histories_are_point_in_time():
    # user 0 clicks items 5, 6, 7 at t=10, 20, 30; user 1 clicks item 9 at t=15
    log = ClickLog.build(np.array([0, 0, 0, 1]), np.array([10.0, 20.0, 30.0, 15.0]), np.array([5, 6, 7, 9]), 2)
    h = log.histories(np.array([0, 0, 0, 1, 1]), np.array([10.0, 25.0, 99.0, 15.0, 16.0]), 2)
    assert h.tolist() == [[-1, -1], [5, 6], [6, 7], [-1, -1], [-1, 9]]
    assert log.final_histories(3).tolist() == [[5, 6, 7], [-1, -1, 9]]


def test_counts_before_never_sees_the_future():
    groups = np.array([1, 1, 1, 2])
    ts = np.array([1.0, 2.0, 3.0, 1.0])
    got = counts_before(groups, ts, np.array([1, 1, 1, 2, 0]), np.array([2.0, 2.5, 100.0, 1.0, 5.0]), 3)
    assert got.tolist() == [1, 2, 3, 0, 0]


def test_category_affinity_rows_sum_to_one():
    hist = np.array([[-1, 0, 1], [-1, -1, -1]])
    aff = category_affinity(hist, np.array([2, 2]), n_cats=4)
    assert np.allclose(aff.sum(1), 1.0)
    assert aff[0].argmax() == 2
    assert np.allclose(aff[1], 0.25)


def test_online_state_is_bounded():
    st = OnlineState(n_items=10, history_len=3, seen_memory=2, max_users=2)
    for i in range(5):
        st.record_click("a", i)
    ctx = st.context("a")
    assert ctx.history.tolist() == [2, 3, 4] and ctx.n_clicks == 5
    for i in range(4):
        st.record_impression("a", f"i{i}", i)
    assert st.context("a").seen == frozenset({"i2", "i3"})
    st.record_click("b", 1)
    st.record_click("c", 1)
    assert len(st) == 2 and not st.context("a").known
    assert st.item_clicks[1] == 3  # "a" clicked it once, "b" and "c" once each


def test_record_impressions_equals_one_record_impression_each():
    rng = np.random.default_rng(4)
    a = OnlineState(n_items=50, history_len=3, seen_memory=7, max_users=4, seen_ttl_s=100.0)
    b = OnlineState(n_items=50, history_len=3, seen_memory=7, max_users=4, seen_ttl_s=100.0)
    for j in range(40):
        user = f"u{rng.integers(0, 6)}"  # more users than kept: evictions
        rows = rng.integers(0, 50, int(rng.integers(0, 12)))  # repeats included
        ids = [f"i{r}" for r in rows]
        ts = 1000.0 + 10.0 * j
        for iid, r in zip(ids, rows.tolist()):
            a.record_impression(user, iid, r, ts)
        b.record_impressions(user, ids, rows, ts)
    np.testing.assert_array_equal(a.item_impressions, b.item_impressions)
    assert list(a._users) == list(b._users)
    for user in a._users:
        assert list(a._users[user].seen.items()) == list(b._users[user].seen.items())
        assert a.context(user, 1300.0).seen == b.context(user, 1300.0).seen
    with pytest.raises(ValueError, match="2 item ids but 1 rows"):
        b.record_impressions("u1", ["i1", "i2"], np.array([1]))


def test_seen_items_come_least_recently_shown_first_within_the_ttl():
    """What a worker hands over with a request (serving/offload.py keeps the newest end)."""
    import numpy as np

    from feedrank.features.online import OnlineState

    st = OnlineState(10, history_len=3, seen_memory=4, seen_ttl_s=100.0)
    st.record_impressions("u", ["a", "b", "c"], np.array([0, 1, 2]), ts=1000.0)
    st.record_impressions("u", ["a"], np.array([0]), ts=1050.0)  # shown again: now the newest
    assert st.seen_items("u", 1060.0) == ("b", "c", "a")
    assert set(st.seen_items("u", 1060.0)) == set(st.context("u", 1060.0).seen)
    assert st.seen_items("u", 1120.0) == ("a",)  # b and c older than the TTL
    st.record_impressions("u", ["d", "e", "f", "g"], np.array([3, 4, 5, 6]), ts=1130.0)
    assert st.seen_items("u", 1130.0) == ("d", "e", "f", "g")  # seen_memory 4: the oldest dropped
    assert st.seen_items("nobody", 1130.0) == ()
