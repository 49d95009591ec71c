"""Point-in-time replay of test requests (bench/retrieval_replay.py): requests are grouped
and timed as served, and nothing a request is scored with comes from its own future."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from feedrank.bench.retrieval_replay import ReplayInputs, replay_requests, run_replay
from feedrank.config import FeedrankConfig
from feedrank.pipeline.examples import KIND_CODES, EventArrays
from feedrank.retrieval.prior import AgePrior

H = 3600.0


def _events(rows: list[tuple[float, int, int, str, int]]) -> EventArrays:
    """rows of (ts, user, item, kind, request)."""
    ts, u, i, k, r = (np.array(c) for c in zip(*rows))
    return EventArrays(ts.astype(float), u.astype(np.int64), np.array([f"u{j}" for j in range(u.max() + 1)], dtype=object),
                       i.astype(np.int64), np.array([KIND_CODES[x] for x in k]), np.zeros(len(ts), np.int64) - 1,
                       r.astype(np.int64))


def _catalog(n: int, published_at: np.ndarray):
    return SimpleNamespace(item_ids=np.array([f"i{j}" for j in range(n)], dtype=object), published_at=published_at,
                           creators=np.array(["c0"] * n, dtype=object))


def test_requests_are_timed_at_their_first_event_and_group_their_clicks():
    ev = _events([(0.0, 0, 0, "click", -1), (100.0, 0, 1, "impression", 0), (100.0, 0, 2, "impression", 0),
                  (130.0, 0, 1, "click", 0), (160.0, 0, 2, "click", 0), (200.0, 1, 3, "impression", 1),
                  (500.0, 1, 3, "click", 1)])
    is_test = ev.ts >= 50
    reqs = replay_requests(ev, is_test, max_requests=10, seed=0)
    assert reqs.ts.tolist() == [100.0, 200.0]
    assert [r.tolist() for r in reqs.relevant] == [[1, 2], [3]]
    assert reqs.users.tolist() == [0, 1]
    assert len(replay_requests(ev, is_test, max_requests=1, seed=0)) == 1


def test_without_request_ids_clicks_in_the_same_second_form_one_request():
    ev = _events([(10.0, 0, 0, "click", -1), (20.2, 0, 1, "click", -1), (20.7, 0, 2, "click", -1), (30.0, 1, 1, "click", -1)])
    reqs = replay_requests(ev, ev.ts >= 15, max_requests=10, seed=0)
    assert reqs.ts.tolist() == [20.0, 30.0] and [r.tolist() for r in reqs.relevant] == [[1, 2], [1]]


def test_replay_never_scores_a_request_with_its_own_future():
    # item 1 gets 50 clicks at and after the request (t = 10 h); item 2 had 3 clicks before it.
    # Popularity (and a popularity-only prior) at t must prefer item 2; item 0 was clicked by
    # the user before t and must not be a candidate; item 3 is published after t.
    t = 10 * H
    rows = [(1 * H, 0, 0, "click", -1)] + [(2 * H + j, 1 + j, 2, "click", -1) for j in range(3)]
    rows += [(t, 0, 1, "impression", 7), (t + 5, 0, 1, "click", 7)]
    rows += [(t + 10 + j, 4 + j, 1, "click", -1) for j in range(49)]
    ev = _events(rows)
    pub = np.array([0.0, 0.0, 0.0, t + 60.0])
    cat = _catalog(4, pub)
    vecs = np.eye(4, dtype=np.float32)[:, :4] * 0.0  # towers indifferent: only counters decide
    seen = {}

    def encode(hist, ts):
        seen["hist"], seen["ts"] = hist.copy(), ts.copy()
        return np.zeros((len(ts), 4), np.float32)

    is_test = ev.ts >= t
    reqs = replay_requests(ev, is_test & (ev.request_codes >= 0), max_requests=10, seed=0)
    assert reqs.ts.tolist() == [t] and reqs.relevant[0].tolist() == [1]
    prior = AgePrior(0.0, 1.0, 0.0, pop_weight=1.0)
    inp = ReplayInputs(ev, cat, encode, vecs, prior, None, FeedrankConfig(), warm=np.ones(4, bool), boundary=t)
    out = run_replay(inp, reqs, k=1)
    assert seen["hist"][0].tolist()[-1] == 0 and (seen["hist"][0] >= 0).sum() == 1  # only the click before t
    m = out["methods"]
    assert m["popularity"]["recall@10"] == 0.0           # item 2 (3 clicks before t) wins, not item 1
    assert m["two_tower_prior"]["recall@10"] == 0.0
    assert m["two_tower_prior_served"]["recall@10"] == 0.0
    assert out["n_requests"] == 1
