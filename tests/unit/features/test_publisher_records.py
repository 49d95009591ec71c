"""StorePublisher builds item records from one table (vectorised): the same fields and
values as reading each item's counters one by one, and a batch applied in slices of the
consumer gives the counts of applying it event by event."""

from __future__ import annotations

import numpy as np

from feedrank.features.live_io import StorePublisher, window_fields
from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.store.memory import MemoryStore
from feedrank.types import Event, EventKind

T0 = 1_700_000_000.0


def events(n: int) -> list[Event]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        kind = EventKind.CLICK if rng.random() < 0.2 else EventKind.IMPRESSION
        out.append(Event(f"e{i}", T0 + float(rng.integers(0, 7200)), f"u{rng.integers(5)}", f"i{rng.integers(40)}", kind))
    return out


def test_records_match_per_item_counts():
    rt = RealtimeFeatures(windows=(300, 3600, 86400))
    pub = StorePublisher(rt, MemoryStore(), history_len=10)
    evs = events(500)
    assert pub.apply(evs) == 500
    assert pub.stream_now == max(e.ts for e in evs)
    ids = sorted({e.item_id for e in evs})
    rows, users = pub.records(ids, ["u0"])
    fields = window_fields(rt.windows)
    for iid in ids:
        imps, clks = rt.counts([iid], pub.stream_now)
        want = {}
        for w in range(3):
            want[fields[2 * w]] = float(imps[0, w])
            want[fields[2 * w + 1]] = float(clks[0, w])
        want["trending"] = float(rt.trending(clks)[0])
        assert rows[iid] == want
        assert all(type(v) is float for v in rows[iid].values())
    assert users["u0"]["n_clicks"] == sum(e.kind is EventKind.CLICK and e.user_id == "u0" for e in evs)


def test_published_store_records_equal_one_event_at_a_time():
    evs = events(400)
    a = StorePublisher(RealtimeFeatures(), MemoryStore(), history_len=10)
    b = StorePublisher(RealtimeFeatures(), MemoryStore(), history_len=10)
    a.apply(evs)
    for e in evs:
        b.apply([e])
    ids = sorted({e.item_id for e in evs})
    names = list(window_fields(a.rt.windows))
    now = max(e.ts for e in evs)
    va = a.store.get_items(ids, names, now).values
    vb = b.store.get_items(ids, names, now).values
    np.testing.assert_allclose(va, vb)
