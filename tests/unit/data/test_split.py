"""Time splits: boundary choice, request integrity, the overlap check, JSON summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedrank.data.split import TimeSplit, check_no_overlap, split_to_dict, time_split
from feedrank.errors import SchemaError

T0 = 1_700_000_000.0


def frame(ts, request_id=None, kind=None, user_id=None, item_id=None) -> pd.DataFrame:
    n = len(ts)
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "ts": np.asarray(ts, dtype=float),
            "user_id": user_id if user_id is not None else [f"u{i % 3}" for i in range(n)],
            "item_id": item_id if item_id is not None else [f"i{i % 5}" for i in range(n)],
            "kind": kind if kind is not None else ["impression"] * n,
            "request_id": request_id if request_id is not None else [f"r{i}" for i in range(n)],
        }
    )


def test_simple_split_at_quantile():
    ev = frame(T0 + np.arange(10.0))
    sp = time_split(ev, 0.2)
    assert sp.boundary == T0 + 8
    assert sp.train_idx.tolist() == list(range(8))
    assert sp.test_idx.tolist() == [8, 9]
    assert len(sp.dropped_idx) == 0
    assert sp.realized_test_fraction == pytest.approx(0.2)
    check_no_overlap(sp, ev)


def test_unsorted_input_uses_positional_indices():
    ts = T0 + np.array([9.0, 0, 8, 1, 7, 2, 6, 3, 5, 4])
    ev = frame(ts).set_index(pd.Index(list("abcdefghij")))
    sp = time_split(ev, 0.3)
    assert sorted(ev["ts"].iloc[sp.test_idx] - T0) == [7, 8, 9]
    assert set(sp.test_frame(ev).index) == {"a", "c", "e"}
    assert sp.train_mask().sum() == 7 and not (sp.train_mask() & sp.test_mask()).any()
    check_no_overlap(sp, ev)


def test_request_never_straddles_boundary():
    # request r7 starts at t=7 (impression) and its click comes at t=8.5, across the
    # quantile boundary (t=8): the whole request must stay on one side.
    ts = T0 + np.array([0, 1, 2, 3, 4, 5, 6, 7, 8.5, 9, 10], dtype=float)
    req = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r7", "r9", "r10"]
    kind = ["impression"] * 8 + ["click"] + ["impression"] * 2
    ev = frame(ts, request_id=req, kind=kind)
    sp = time_split(ev, 0.3)
    check_no_overlap(sp, ev)
    train_req = set(ev["request_id"].iloc[sp.train_idx])
    test_req = set(ev["request_id"].iloc[sp.test_idx])
    assert not train_req & test_req
    # r7 goes with its first event: both rows on the same side
    r7_rows = {7, 8}
    assert r7_rows <= set(sp.train_idx.tolist()) or r7_rows <= set(sp.test_idx.tolist())
    assert sp.train.by_kind["click"] + sp.test.by_kind["click"] == 1
    assert sp.train.n_events + sp.test.n_events == len(ev)


def test_snap_refuses_a_large_shift_and_drop_mode_keeps_quantile():
    # one long request spans the middle of the data: no clean cut near the 50% quantile
    n = 200
    ts = T0 + np.arange(float(n))
    req = [f"r{i}" for i in range(n)]
    req[20] = req[179] = "long"
    ev = frame(ts, request_id=req)
    with pytest.raises(SchemaError, match="straddle='drop'"):
        time_split(ev, 0.5)
    sp = time_split(ev, 0.5, straddle="drop")
    assert sp.boundary == T0 + 100
    assert sp.n_dropped_requests == 1
    assert sorted(sp.dropped_idx.tolist()) == [20, 179]
    check_no_overlap(sp, ev)
    d = split_to_dict(sp)
    assert d["n_dropped_events"] == 2 and d["straddle"] == "drop"
    # a generous tolerance lets snap move the boundary to a clean cut instead
    sp2 = time_split(ev, 0.5, max_fraction_shift=0.5)
    check_no_overlap(sp2, ev)
    assert len(sp2.dropped_idx) == 0


def test_no_clean_cut_at_all():
    ev = frame(T0 + np.array([0.0, 1.0, 2.0]), request_id=["r", "r", "r"])
    with pytest.raises(SchemaError, match="no clean cut"):
        time_split(ev, 0.3)


def test_drop_mode_refuses_an_empty_side():
    ev = frame(T0 + np.array([0.0, 1.0]), request_id=["r", "r"])
    with pytest.raises(SchemaError, match="is empty"):
        time_split(ev, 0.5, straddle="drop")


def test_null_request_ids_are_their_own_groups():
    ev = frame(T0 + np.arange(6.0), request_id=[None, None, "a", "a", None, None])
    sp = time_split(ev, 0.5)
    check_no_overlap(sp, ev)
    assert sp.train.n_events + sp.test.n_events == 6


def test_counts_per_side():
    ev = frame(
        T0 + np.arange(6.0),
        kind=["impression", "click", "impression", "impression", "hide", "click"],
        user_id=["a", "a", "b", "c", "c", "d"],
        item_id=["x", "x", "y", "y", "z", "x"],
    )
    sp = time_split(ev, 0.5)
    assert sp.train.by_kind == {"impression": 2, "click": 1, "dwell": 0, "hide": 0}
    assert sp.test.by_kind == {"impression": 1, "click": 1, "dwell": 0, "hide": 1}
    assert (sp.train.n_users, sp.train.n_items) == (2, 2)
    assert (sp.test.n_users, sp.test.n_items) == (2, 3)
    assert sp.train.ts_max < sp.boundary <= sp.test.ts_min


def test_split_to_dict_is_json():
    ev = frame(T0 + np.arange(10.0))
    d = split_to_dict(time_split(ev, 0.2))
    s = json.dumps(d)
    assert d["boundary_ts"] == T0 + 8
    assert d["boundary_iso"] == "2023-11-14T22:13:28+00:00"
    assert d["train"]["n_events"] == 8 and d["test"]["n_events"] == 2
    assert "train_idx" not in s


@pytest.mark.parametrize(
    "tamper",
    ["late_train", "early_test", "shared_request", "double_row", "out_of_range"],
)
def test_check_no_overlap_catches_leaks(tamper):
    ev = frame(T0 + np.arange(10.0), request_id=[f"r{i}" for i in range(9)] + ["r0"])
    ev.loc[9, "request_id"] = "r9"
    sp = time_split(ev, 0.2)
    check_no_overlap(sp, ev)
    tr, te = sp.train_idx, sp.test_idx
    kw = dict(
        boundary=sp.boundary,
        test_fraction=sp.test_fraction,
        quantile_ts=sp.quantile_ts,
        straddle=sp.straddle,
        dropped_idx=sp.dropped_idx,
        n_dropped_requests=0,
        train=sp.train,
        test=sp.test,
    )
    if tamper == "late_train":
        bad = TimeSplit(train_idx=np.append(tr, 9), test_idx=te[:-1], **kw)
    elif tamper == "early_test":
        bad = TimeSplit(train_idx=tr[:-1], test_idx=np.append(te, 7), **kw)
    elif tamper == "shared_request":
        ev.loc[9, "request_id"] = "r0"
        bad = sp
    elif tamper == "double_row":
        bad = TimeSplit(train_idx=tr, test_idx=te, **{**kw, "dropped_idx": np.array([0])})
    else:
        bad = TimeSplit(train_idx=np.append(tr, 99), test_idx=te, **kw)
    with pytest.raises(SchemaError):
        check_no_overlap(bad, ev)


@pytest.mark.parametrize(
    "call",
    [
        lambda: time_split(frame([]), 0.2),
        lambda: time_split(frame([T0]), 0.2),
        lambda: time_split(frame([T0, T0]), 0.2),
        lambda: time_split(frame([T0, T0 + 1]), 0.0),
        lambda: time_split(frame([T0, T0 + 1]), 1.0),
        lambda: time_split(frame([T0, np.nan, T0 + 1]), 0.3),
        lambda: time_split(pd.DataFrame({"x": [1.0, 2.0]}), 0.5),
        lambda: time_split(pd.DataFrame({"ts": pd.to_datetime([0, 1], unit="s")}), 0.5),
        lambda: time_split(frame([T0, T0 + 1]), 0.5, straddle="keep"),
    ],
)
def test_bad_input(call):
    with pytest.raises(SchemaError):
        call()


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 3), st.integers(0, 12)),
        min_size=2,
        max_size=80,
    ),
    st.floats(0.05, 0.9),
    st.sampled_from(["snap", "drop"]),
)
def test_property_train_before_boundary_before_test(rows, frac, mode):
    # (request start, delay of this event, request number) -> events of a request share a
    # start and may arrive a few seconds later
    starts: dict[int, int] = {}
    ts, req = [], []
    for start, delay, r in rows:
        s0 = starts.setdefault(r, start)
        ts.append(T0 + s0 + delay)
        req.append(f"r{r}")
    ev = frame(ts, request_id=req)
    try:
        sp = time_split(ev, frac, straddle=mode, max_fraction_shift=1.0)
    except SchemaError as exc:
        # only legitimate refusals: a single timestamp, or no clean cut anywhere
        msg = str(exc)
        assert "one timestamp" in msg or "no clean cut" in msg or (mode == "drop" and "is empty" in msg)
        return
    check_no_overlap(sp, ev)
    t = ev["ts"].to_numpy()
    assert len(sp.train_idx) > 0 and len(sp.test_idx) > 0
    assert t[sp.train_idx].max() < sp.boundary <= t[sp.test_idx].min()
    assert len(sp.train_idx) + len(sp.test_idx) + len(sp.dropped_idx) == len(ev)
    assert not set(ev["request_id"].iloc[sp.train_idx]) & set(ev["request_id"].iloc[sp.test_idx])
    if mode == "snap":
        assert len(sp.dropped_idx) == 0
        # all events of a request sit on the side of its first event
        first = ev.groupby("request_id")["ts"].transform("min").to_numpy()
        assert (first[sp.test_idx] >= sp.boundary).all() and (first[sp.train_idx] < sp.boundary).all()


def test_large_frame_is_fast():
    import time

    rng = np.random.default_rng(0)
    n, n_req = 500_000, 100_000
    req = rng.integers(0, n_req, n)
    base = np.sort(rng.uniform(T0, T0 + 30 * 86400, n_req))
    ts = base[req] + (rng.random(n) < 0.3) * rng.exponential(2.0, n)
    ev = pd.DataFrame({"ts": ts, "request_id": pd.Series(req).map("r{}".format), "kind": "impression"})
    t = time.perf_counter()
    sp = time_split(ev, 0.2)
    check_no_overlap(sp, ev)
    assert time.perf_counter() - t < 10.0
    assert abs(sp.realized_test_fraction - 0.2) < 0.01


def test_auto_snaps_when_it_can_and_drops_when_it_must():
    n = 200
    ts = T0 + np.arange(float(n))
    req = [f"r{i}" for i in range(n)]
    req[20] = req[179] = "long"  # open across every cut near the middle
    ev = frame(ts, request_id=req)
    sp = time_split(ev, 0.5, straddle="auto")
    assert sp.straddle == "drop" and sp.n_dropped_requests == 1
    check_no_overlap(sp, ev)
    clean = frame(ts, request_id=[f"r{i}" for i in range(n)])
    sp2 = time_split(clean, 0.5, straddle="auto")
    assert sp2.straddle == "snap" and len(sp2.dropped_idx) == 0
    with pytest.raises(SchemaError, match="straddle"):
        time_split(clean, 0.5, straddle="sideways")
