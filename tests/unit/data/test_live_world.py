"""The synthetic world acting on live feeds: its click model and the breaking news."""

from __future__ import annotations

import numpy as np

from feedrank.data.synth import World, WorldConfig
from feedrank.data.synth.live import BreakingNews, LiveWorld

CFG = WorldConfig(n_users=400, n_items=120, n_days=2, seed=7)


def test_clicks_follow_the_worlds_position_based_model():
    world = World.build(CFG)
    live = LiveWorld(world, seed=0)
    now = CFG.end
    n_items = CFG.n_items
    a_all = live.attractiveness("u3", [f"i{k}" for k in range(n_items)], now)
    assert np.allclose(a_all, world.attractiveness(np.full(n_items, 3), np.arange(n_items), np.full(n_items, now)))
    best = f"i{int(np.argmax(a_all))}"
    a = [a_all.max()]
    rng = np.random.default_rng(0)
    n = 4000
    top = bottom = 0
    for _ in range(n):
        clicks, dwell = live.feedback(rng, "u3", [best] * 10, np.arange(10), now)
        top += clicks[0]
        bottom += clicks[9]
        assert np.isnan(dwell[~clicks]).all() and (dwell[clicks] > 0).all()
    # the same item is clicked less deeper in the feed: exam(9) / exam(0) = 10 ** -eta
    assert abs(top / n - a[0]) < 0.03 and bottom < top * 0.3


def test_breaking_news_defaults_to_the_rarest_topic_and_its_keenest_users():
    world = World.build(CFG)
    live = LiveWorld(world, BreakingNews(interested_share=0.25), seed=0)
    assert not live.is_new_topic and live.category in world.category_names
    c = world.category_names.index(live.category)
    assert live.interested.sum() == 100
    assert world.user_p1[live.interested, c].min() >= world.user_p1[~live.interested, c].max()
    items = live.breaking_items(CFG.end)
    assert len(items) == live.breaking.n_items and all(r["category"] == live.category for r in items)
    assert live.is_breaking([r["item_id"] for r in items]).all() and not live.is_breaking(["i1"]).any()
    keen = f"u{int(np.flatnonzero(live.interested)[0])}"
    other = f"u{int(np.flatnonzero(~live.interested)[0])}"
    assert live.attractiveness(keen, ["b0"], CFG.end)[0] == live.breaking.appeal_interested
    assert live.attractiveness(other, ["b0"], CFG.end)[0] == live.breaking.appeal_other
    assert live.attractiveness(keen, ["b0"], CFG.end + 3600)[0] < live.breaking.appeal_interested  # it decays
    new = LiveWorld(world, BreakingNews(category="volcano"), seed=0)
    assert new.is_new_topic and new.breaking_items(CFG.end)[0]["category"] == "volcano"
