"""Ranker examples are point-in-time: an impression at t sees only events before t."""

from __future__ import annotations

import dataclasses
import numpy as np
import pandas as pd
import pytest
import torch

from feedrank.config import RetrievalConfig
from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import ClickLog
from feedrank.features.vocab import Vocab
from feedrank.pipeline.build import learn_max_item_age
from feedrank.pipeline.examples import KIND_CODES, EventArrays, ranking_examples
from feedrank.ranking.features import FEATURE_NAMES, N_FEATURES
from feedrank.retrieval.encode import encode_items
from feedrank.retrieval.train import two_tower_dims
from feedrank.retrieval.two_tower import build_two_tower

T0 = 1_767_225_600.0
COL = {n: i for i, n in enumerate(FEATURE_NAMES)}
PRIOR_CTR, PRIOR_W = 0.1, 20.0


def _catalog(n: int = 6) -> tuple[ItemCatalog, dict[str, Vocab]]:
    items = pd.DataFrame({
        "item_id": [f"i{k}" for k in range(n)],
        "title": [f"title number {k}" for k in range(n)],
        "category": ["news", "sports", "tech"] * (n // 3),
        "subcategory": ["x"] * n,
        "creator": [f"c{k % 2}" for k in range(n)],
        "published_at": [T0 - 3600.0 * (k + 1) for k in range(n)],
    })
    vocabs = {"category": Vocab.build("category", items["category"]), "subcategory": Vocab.build("subcategory", items["subcategory"])}
    return ItemCatalog.build(items, vocabs, 1024, 1024), vocabs


def _ev(ts, user, item, kind, request=None, position=None) -> dict:
    return {"event_id": f"e{ts}-{user}-{item}-{kind}", "ts": T0 + ts, "user_id": user, "item_id": item, "kind": kind,
            "position": position, "request_id": request}


@pytest.fixture(scope="module")
def setup():
    catalog, vocabs = _catalog()
    rows = [
        # before the impression under test: i0 has 1 impression and 1 click (u7), u1 clicked i1 once
        _ev(10, "u7", "i0", "impression", "r0", 0),
        _ev(20, "u7", "i0", "click", "r0", 0),
        _ev(30, "u1", "i1", "impression", "rA", 0),
        _ev(40, "u1", "i1", "click", "rA", 0),
        # the impression under test at t=100: r1 shows i0 (clicked) and i2 (not clicked)
        _ev(100, "u1", "i0", "impression", "r1", 0),
        _ev(100, "u1", "i2", "impression", "r1", 1),
        # a click at the very same second must not count (strictly before)
        _ev(100, "u8", "i0", "click", "r8", 0),
        _ev(105, "u1", "i0", "click", "r1", 0),
        # i2 is clicked by u1, but in a different request: not a label for r1
        _ev(106, "u1", "i2", "click", "r2", 3),
        # a click with no request id never labels anything
        _ev(107, "u1", "i2", "click", None, None),
        # the future: many impressions and clicks on i0 by others, and more clicks by u1
        *[_ev(200 + j, f"v{j}", "i0", "impression", f"rf{j}", 0) for j in range(30)],
        *[_ev(300 + j, f"v{j}", "i0", "click", f"rf{j}", 0) for j in range(30)],
        *[_ev(400 + j, "u1", "i3", "click", f"ru{j}", 0) for j in range(5)],
        # an event for an item not in the catalogue is dropped
        _ev(500, "u1", "zzz", "impression", "rz", 0),
        # a late impression of i0 that sees all of the above
        _ev(1000, "u9", "i0", "impression", "rL", 2),
    ]
    events = pd.DataFrame(rows)
    ev = EventArrays.build(events, catalog)
    torch.manual_seed(0)
    cfg = RetrievalConfig(embed_dim=8, out_dim=8, history_len=5, id_buckets=1024, text_buckets=1024)
    tt = build_two_tower(two_tower_dims(cfg, len(vocabs["category"]), len(vocabs["subcategory"])))
    vectors = encode_items(tt, catalog)
    imp_rows = np.flatnonzero(ev.mask("impression"))
    ex = ranking_examples(ev, imp_rows, catalog, tt, vectors, len(vocabs["category"]), cfg.history_len, PRIOR_CTR, PRIOR_W)
    return events, catalog, ev, imp_rows, ex


def _row(ev, imp_rows, ts: float, item_idx: int, user: str) -> int:
    ucode = list(ev.user_ids).index(user)
    hits = [k for k, r in enumerate(imp_rows) if ev.ts[r] == T0 + ts and ev.item_idx[r] == item_idx and ev.user_codes[r] == ucode]
    assert len(hits) == 1
    return hits[0]


def test_event_arrays_align_and_drop_unknown_items(setup):
    events, catalog, ev, _, _ = setup
    assert len(ev) == len(events) - 1  # the "zzz" row
    assert (ev.item_idx >= 0).all() and (ev.item_idx < len(catalog)).all()
    assert set(np.unique(ev.kind)) <= set(KIND_CODES.values())
    assert ev.n_users == events.loc[events.item_id != "zzz", "user_id"].nunique()
    assert (ev.request_codes[pd.isna(events.loc[events.item_id != "zzz", "request_id"]).to_numpy()] == -1).all()
    assert (ev.position[pd.isna(events.loc[events.item_id != "zzz", "position"]).to_numpy()] == -1).all()


def test_item_counters_exclude_the_future(setup):
    _, _, ev, imp_rows, ex = setup
    assert ex.dense.shape == (len(imp_rows), N_FEATURES)
    r = _row(ev, imp_rows, 100, 0, "u1")
    # before t=100, i0 had exactly 1 impression and 1 click; the 30 later clicks, the 30
    # later impressions and the click at t=100 itself are not seen
    assert ex.dense[r, COL["log_item_impressions"]] == pytest.approx(np.log1p(1))
    assert ex.dense[r, COL["log_item_clicks"]] == pytest.approx(np.log1p(1))
    assert ex.dense[r, COL["item_ctr_smoothed"]] == pytest.approx((1 + PRIOR_W * PRIOR_CTR) / (1 + PRIOR_W))
    # the late impression sees all of it: 1 + 2 (t=100, both users) ... impressions of i0 before t=1000
    late = _row(ev, imp_rows, 1000, 0, "u9")
    n_imp_before = 1 + 1 + 30   # t=10, t=100 (u1), the 30 future ones
    n_clk_before = 1 + 1 + 1 + 30  # t=20, t=100 (u8), t=105 (u1), the 30 future ones
    assert ex.dense[late, COL["log_item_impressions"]] == pytest.approx(np.log1p(n_imp_before))
    assert ex.dense[late, COL["log_item_clicks"]] == pytest.approx(np.log1p(n_clk_before))


def test_user_features_exclude_the_future(setup):
    _, catalog, ev, imp_rows, ex = setup
    r = _row(ev, imp_rows, 100, 0, "u1")
    # u1 had clicked once (i1 at t=40) before t=100; the 1 + 1 + 5 later clicks are unseen
    assert ex.dense[r, COL["log_user_clicks"]] == pytest.approx(np.log1p(1))
    first = _row(ev, imp_rows, 30, 1, "u1")
    assert ex.dense[first, COL["log_user_clicks"]] == 0.0
    # category affinity (smoothed share, 4 = 3 categories + unknown): with no history it
    # is uniform; at t=100 it is built from the one sports click (i1) only, so news (i0)
    # gets 0.25 / 2 -- the later news clicks of u1 (i0 at 105, i3 x5) would raise it
    n_cat = 4
    assert ex.dense[first, COL["category_affinity"]] == pytest.approx(1.0 / n_cat)
    assert ex.dense[r, COL["category_affinity"]] == pytest.approx((1.0 / n_cat) / 2)


def test_features_do_not_change_when_the_future_changes(setup):
    """Strongest form of point-in-time: drop every event after t=100 and the t=100 rows
    have identical features."""
    events, catalog, ev, imp_rows, ex = setup
    cut = events[events.ts <= T0 + 100].reset_index(drop=True)
    ev2 = EventArrays.build(cut, catalog)
    rows2 = np.flatnonzero(ev2.mask("impression"))
    torch.manual_seed(0)
    cfg = RetrievalConfig(embed_dim=8, out_dim=8, history_len=5, id_buckets=1024, text_buckets=1024)
    n_cat = int(catalog.cat_idx.max()) + 1
    tt = build_two_tower(two_tower_dims(cfg, n_cat, 2))
    vectors = encode_items(tt, catalog)
    ex_a = ranking_examples(ev2, rows2, catalog, tt, vectors, n_cat, 5, PRIOR_CTR, PRIOR_W)
    full_rows = np.flatnonzero(ev.mask("impression") & (ev.ts <= T0 + 100))
    ex_b = ranking_examples(ev, full_rows, catalog, tt, vectors, n_cat, 5, PRIOR_CTR, PRIOR_W)
    assert len(rows2) == len(full_rows)
    np.testing.assert_allclose(ex_a.dense, ex_b.dense, rtol=1e-6, atol=1e-6)


def test_labels_come_from_clicks_in_the_same_request(setup):
    _, _, ev, imp_rows, ex = setup
    assert ex.labels[_row(ev, imp_rows, 100, 0, "u1")] == 1   # clicked in r1
    assert ex.labels[_row(ev, imp_rows, 100, 2, "u1")] == 0   # clicked only in r2 / with no request
    assert ex.labels[_row(ev, imp_rows, 10, 0, "u7")] == 1
    assert ex.labels[_row(ev, imp_rows, 1000, 0, "u9")] == 0
    assert ex.labels.sum() == 2 + 1 + 30  # r0, rA, r1, rf0..rf29
    # positions and groups come through; unknown positions would be 0
    assert ex.position[_row(ev, imp_rows, 100, 2, "u1")] == 1
    assert (ex.position >= 0).all()
    assert set(ex.labels.tolist()) <= {0, 1}


def test_impression_without_request_id_is_never_positive():
    catalog, _ = _catalog()
    events = pd.DataFrame([_ev(1, "u", "i0", "impression", None, 0), _ev(2, "u", "i0", "click", None, 0)])
    ev = EventArrays.build(events, catalog)
    assert ev.impression_labels(np.flatnonzero(ev.mask("impression"))).tolist() == [0]


# ----------------------------------------------------------------------------- age limit
def _clicks_with_ages(ages_h: np.ndarray, span_days: float = 10.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = len(ages_h)
    ts = T0 + np.sort(rng.uniform(0, span_days * 86400, n))
    ts[0], ts[-1] = T0, T0 + span_days * 86400
    published = ts - ages_h * 3600.0
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(n)], "title": "t", "category": "c", "subcategory": "s",
                          "creator": "x", "published_at": published})
    vocabs = {"category": Vocab.build("category", ["c"]), "subcategory": Vocab.build("subcategory", ["s"])}
    catalog = ItemCatalog.build(items, vocabs, 64, 64)
    clicks = ClickLog.build(np.zeros(n, dtype=np.int64), ts, np.arange(n), 1)
    return clicks, catalog


def test_learn_max_item_age_given_or_off():
    clicks, catalog = _clicks_with_ages(np.full(50, 5.0))
    assert learn_max_item_age(0, clicks, catalog) is None
    assert learn_max_item_age(12, clicks, catalog) == 12 * 3600.0
    assert learn_max_item_age(0.5, clicks, catalog) == 1800.0


def test_learn_max_item_age_learns_from_clicks():
    ages = np.linspace(0.0, 20.0, 500)  # hours; 99th percentile ~19.8 h
    clicks, catalog = _clicks_with_ages(ages)
    got = learn_max_item_age(-1, clicks, catalog)
    assert got == pytest.approx(np.quantile(ages, 0.99) * 3600.0 * 1.5, rel=1e-6)
    # at least an hour even when every click is on brand-new items
    clicks, catalog = _clicks_with_ages(np.zeros(100))
    assert learn_max_item_age(-1, clicks, catalog) == 3600.0


def test_learn_max_item_age_no_limit_when_unneeded_or_unknowable():
    # a film catalogue: clicks on items much older than the data span -> no limit
    clicks, catalog = _clicks_with_ages(np.full(100, 24.0 * 365), span_days=10)
    assert learn_max_item_age(-1, clicks, catalog) is None
    # too few clicks to learn from
    clicks, catalog = _clicks_with_ages(np.full(10, 3.0))
    assert learn_max_item_age(-1, clicks, catalog) is None
    # unknown publish times are ignored
    clicks, catalog = _clicks_with_ages(np.full(100, 3.0))
    catalog = dataclasses.replace(catalog, published_at=np.full(len(catalog), np.nan))
    assert learn_max_item_age(-1, clicks, catalog) is None
