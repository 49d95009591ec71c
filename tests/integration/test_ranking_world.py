"""The ranker on a synthetic world whose click model is known: it recovers the position
bias (examination curve) in its training-only position term, and its engagement counters
match between training (point in time) and serving (online state)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feedrank.config import FeedrankConfig, RankingConfig
from feedrank.data.synth import WorldConfig, WorldTruth, generate_world
from feedrank.pipeline.build import prepare
from feedrank.pipeline.examples import (
    EngagementSpec,
    engagement_before,
    engagement_state,
    estimate_exam_and_dwell,
    fit_engagement_spec,
    ranking_examples,
)
from feedrank.ranking.model import implied_examination
from feedrank.ranking.train import train_ranker
from feedrank.retrieval.encode import encode_items
from feedrank.retrieval.train import two_tower_dims
from feedrank.retrieval.two_tower import build_two_tower


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("rkworld") / "world"
    generate_world(out, WorldConfig(n_users=1500, n_items=400, n_days=3, activity_mean=1.5, seed=11), progress=False)
    cfg = FeedrankConfig()
    prep = prepare(out, cfg, say=lambda m: None)
    return out, prep, cfg


def test_ranker_recovers_the_known_position_bias(world):
    out, prep, cfg = world
    ev, catalog = prep.events, prep.catalog
    n_cat = len(prep.vocabs["category"])
    torch.manual_seed(0)
    tt = build_two_tower(two_tower_dims(cfg.retrieval, n_cat, len(prep.vocabs["subcategory"])))
    rows = np.flatnonzero(ev.mask("impression"))
    exam, dwell_prior = estimate_exam_and_dwell(ev, np.arange(len(ev)))
    spec = EngagementSpec.build(prep.items, catalog, exam, dwell_prior)
    ex = ranking_examples(ev, rows, catalog, tt, encode_items(tt, catalog), n_cat, cfg.retrieval.history_len, 0.02, 20.0, spec)
    rc = RankingConfig(interaction="mlp", hidden=(32,), epochs=3, batch_size=1024, lr=3e-3)
    model, _ = train_ranker(rc, ex.dense, ex.category, ex.position, ex.labels, n_cat, np.random.default_rng(0),
                            show_progress=False, groups=ex.groups, init_examination=exam)
    truth = WorldTruth.load(out).examination(np.arange(10))
    learned = implied_examination(model, ex.dense, ex.category, 10)
    # the position term is the examination curve (relative to the top slot), not relevance
    assert np.corrcoef(np.log(learned), np.log(truth))[0, 1] > 0.95, (learned, truth)
    assert np.abs(learned - truth).max() < 0.16, (learned, truth)
    assert (np.diff(learned[:5]) < 0.02).all(), learned  # falls over the top slots
    # and the CTR-by-slot estimate the engagement counters use is close to it too
    assert np.abs(exam[:10] - truth).max() < 0.12, (exam[:10], truth)


def test_serving_counters_equal_point_in_time_counters(world):
    _, prep, _ = world
    ev, catalog = prep.events, prep.catalog
    n_cat = len(prep.vocabs["category"])
    spec = fit_engagement_spec(ev, np.arange(len(ev)), prep.items, catalog, n_cat)
    assert spec.creator_new.sum() > 0  # the world's creator groups reach the ranker
    assert (spec.category_ctr > 0).all() and abs(spec.category_share.sum() - 1) < 1e-9
    half = len(ev) // 2
    t_mid = float(ev.ts[half])
    first = np.flatnonzero(ev.ts < t_mid)
    # state after the first half, then the second half observed one event at a time
    sub = type(ev)(*(getattr(ev, f)[first] if getattr(ev, f) is not None and f != "user_ids" else getattr(ev, f)
                     for f in ev.__dataclass_fields__))
    st = engagement_state(sub, catalog, n_cat, spec)
    last: dict[str, float] = {}  # user id -> time of its last event in the first half
    for code, t in zip(sub.user_codes.tolist(), sub.ts.tolist()):
        uid = str(ev.user_ids[code])
        last[uid] = max(t, last.get(uid, -np.inf))
    seen = [last[u] for u in st.users]  # least recently active first (what a capped server drops first)
    assert len(seen) > 100 and seen == sorted(seen)
    kinds = {0: "impression", 1: "click", 2: "dwell", 3: "hide"}
    rest = np.flatnonzero(ev.ts >= t_mid)
    for r in rest[:3000]:
        st.observe(str(ev.user_ids[ev.user_codes[r]]), int(ev.item_idx[r]), kinds[int(ev.kind[r])], int(ev.position[r]),
                   float(ev.ts[r]), float(ev.dwell_ms[r]))
    t_q = float(ev.ts[rest[2999]]) + 1e-3
    users = ev.user_codes[rest[:200]]
    items = ev.item_idx[rest[:200]]
    ts = np.full(200, t_q)
    upto = np.flatnonzero(np.arange(len(ev)) <= rest[2999])
    part = type(ev)(*(getattr(ev, f)[upto] if getattr(ev, f) is not None and f != "user_ids" else getattr(ev, f)
                      for f in ev.__dataclass_fields__))
    offline = engagement_before(part, users, items, ts, catalog, n_cat, spec)
    for u_row, (u, i) in enumerate(zip(users[:50], items[:50])):
        online = st.engagement(str(ev.user_ids[u]), np.array([i]), t_q)
        for f in offline.__dataclass_fields__:
            np.testing.assert_allclose(getattr(online, f)[0], getattr(offline, f)[u_row], rtol=1e-6, atol=1e-9, err_msg=f)
    # the comparison is not vacuous: the users above have (decayed) history in the item's category
    assert (offline.user_cat_eimps_3d[:50] > 0).mean() > 0.3 and (offline.user_cat_eimps[:50] > offline.user_cat_eimps_3d[:50]).any()
    assert offline.user_clicks_3d[:50].max() > 0
