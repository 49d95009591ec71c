"""The re-ranking stage inside the Recommender: reloadable blocklists, seen TTL, creator
caps, exploration propensities (the pure policies have their own property tests)."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from feedrank.config import config_from_dict, config_to_dict
from feedrank.pipeline.artifacts import ModelArtifacts
from feedrank.pipeline.policy_source import BlocklistSource
from feedrank.pipeline.recommender import Recommender
from feedrank.types import Event, EventKind, FeedRequest

NOW = float(os.environ["FEEDRANK_TEST_NOW"])


def _rec(art: ModelArtifacts, **rerank) -> Recommender:
    raw = config_to_dict(art.cfg)
    raw["rerank"].update(rerank)
    return Recommender(art, config_from_dict(raw), clock=lambda: NOW)


def _user(art: ModelArtifacts) -> str:
    return str(art.snapshot.user_ids[int(np.argmax(art.snapshot.user_clicks))])


def test_blocklist_file_is_applied_and_reloaded(art: ModelArtifacts, tmp_path: Path):
    f = tmp_path / "block.yaml"
    rec = _rec(art, blocklist_file=str(f))
    user = _user(art)
    first = rec.recommend(FeedRequest(user_id=user, k=10))
    top_item, top_cat = first.items[0].item_id, first.items[1].category
    f.write_text(f"items: [{top_item}]\ncategories: [{top_cat}]\n")
    rec.blocklists.check_every_s = 0.0
    time.sleep(0.01)
    os.utime(f, (time.time() + 5, time.time() + 5))  # a new mtime even on coarse clocks
    after = rec.recommend(FeedRequest(user_id=user, k=10))
    assert top_item not in {it.item_id for it in after.items}
    assert top_cat not in {it.category for it in after.items}
    # a broken edit keeps the previous blocklist in force and is counted
    f.write_text("items: not-a-list\n")
    os.utime(f, (time.time() + 10, time.time() + 10))
    again = rec.recommend(FeedRequest(user_id=user, k=10))
    assert top_cat not in {it.category for it in again.items}
    assert rec.blocklists.errors == 1


def test_blocklist_source_without_file():
    src = BlocklistSource(None)
    assert not src.current()


def test_seen_items_come_back_after_the_ttl(art: ModelArtifacts):
    rec = _rec(art, seen_ttl_hours=1.0, explore_epsilon=0.0)
    user = _user(art)
    first = rec.recommend(FeedRequest(user_id=user, k=10, now=NOW))
    shown = [it.item_id for it in first.items]
    rec.observe([Event(f"e{i}", NOW - 2 * 3600, user, iid, EventKind.IMPRESSION, position=i) for i, iid in enumerate(shown)])
    # shown two hours ago with a one-hour TTL: no longer filtered
    assert rec.state.context(user, NOW).seen == frozenset()
    rec.observe([Event(f"f{i}", NOW - 60, user, iid, EventKind.IMPRESSION, position=i) for i, iid in enumerate(shown)])
    assert rec.state.context(user, NOW).seen == frozenset(shown)
    later = rec.recommend(FeedRequest(user_id=user, k=10, now=NOW))
    assert not set(shown) & {it.item_id for it in later.items}


def test_creator_cap_fills_distinct_creators_first(art: ModelArtifacts):
    rec = _rec(art, max_per_creator=1, explore_epsilon=0.0)
    for i in range(10):
        creators = [it.creator for it in rec.recommend(FeedRequest(user_id=f"user-{i}", k=10)).items]
        distinct = len(set(creators))
        # one item per creator until every creator is used; only then the top-up
        assert len(set(creators[:distinct])) == distinct, creators


def test_exploration_propensities(art: ModelArtifacts):
    rec = _rec(art, explore_epsilon=0.5, explore_position=3)
    explored, kept_greedy = 0, 0
    for i in range(40):
        resp = rec.recommend(FeedRequest(user_id=f"user-{i}", k=10, request_id=f"req-{i}"))
        for it in resp.items:
            if it.rank - 1 == 3:
                if it.source == "explore":
                    explored += 1
                    assert it.propensity < 0.5
                else:
                    kept_greedy += 1
                    assert it.propensity == 0.5
            else:
                assert it.propensity == 1.0
    assert explored > 5 and kept_greedy > 5
    # the same request id replays the same exploration draw
    a = rec.recommend(FeedRequest(user_id="replay", k=10, request_id="fixed"))
    b = _rec(art, explore_epsilon=0.5, explore_position=3).recommend(FeedRequest(user_id="replay", k=10, request_id="fixed"))
    assert [it.item_id for it in a.items] == [it.item_id for it in b.items]


def test_rerank_on_codes_decides_as_on_names(art: ModelArtifacts):
    """Caps over integer category/creator codes keep and order exactly what they keep over the
    names, with exploration, MMR and the exposure floor on or off."""
    users = [str(u) for u in art.snapshot.user_ids[:25]] + ["new-user"]
    settings = [dict(explore_epsilon=0.3, explore_position=2), dict(mmr_lambda=0.7, max_per_creator=1),
                dict(fairness_min_share=0.3, fairness_group="new", max_per_category=1)]
    for extra in settings:
        rec = _rec(art, **extra)
        assert len(rec._rerank_codes[0]) == len(rec.catalog)
        names = _rec(art, **extra)
        names._rerank_codes = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))  # forces the names path
        compared = 0
        for j, user in enumerate(users):
            a = rec.recommend(FeedRequest(user_id=user, k=10, request_id=f"r{j}"))
            b = names.recommend(FeedRequest(user_id=user, k=10, request_id=f"r{j}"))
            assert [(it.item_id, it.propensity, it.source) for it in a.items] == \
                [(it.item_id, it.propensity, it.source) for it in b.items]
            compared += len(a.items)
        assert compared > 100
