"""The Recommender on a tiny trained model: tiers, cold start, seen filter, fallbacks."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from feedrank.config import load_config
from feedrank.data.synth import WorldConfig, generate_world
from feedrank.pipeline.artifacts import ModelArtifacts, load_artifacts
from feedrank.pipeline.build import train_model
from feedrank.pipeline.recommender import STAGES, Recommender
from feedrank.types import Event, EventKind, FeedRequest, FeedResponse, Item

import os

# the shared tiny model and its clock live in tests/unit/pipeline/conftest.py
NOW = float(os.environ["FEEDRANK_TEST_NOW"])
MAX_AGE_H = float(os.environ["FEEDRANK_TEST_MAX_AGE_H"])

K = 10
SLOW_OK = 60_000.0  # a deadline no loaded CI box can spend: tier checks must not depend on speed


def _valid(resp: FeedResponse, k: int, rec: Recommender) -> None:
    ids = [it.item_id for it in resp.items]
    assert len(ids) == k, (resp.tier, ids)
    assert len(set(ids)) == k
    assert all(rec.has_item(i) for i in ids)
    assert [it.rank for it in resp.items] == list(range(1, k + 1))
    assert all(np.isfinite(it.score) for it in resp.items)
    assert all(it.source in ("ann", "fresh", "followed", "trending", "popular", "explore") for it in resp.items)
    assert all(0 < it.propensity <= 1 for it in resp.items)
    assert resp.model_version == rec.model_version


def _known_user(art: ModelArtifacts) -> str:
    return str(art.snapshot.user_ids[int(np.argmax(art.snapshot.user_clicks))])


def _imp(user: str, item: str, ts: float = NOW, kind: EventKind = EventKind.IMPRESSION) -> Event:
    return Event(event_id=f"{user}-{item}-{kind.value}-{ts}", ts=ts, user_id=user, item_id=item, kind=kind)


def test_full_tier_feed(rec: Recommender, art: ModelArtifacts):
    resp = rec.recommend(FeedRequest(user_id=_known_user(art), k=K, request_id="req-1", deadline_ms=SLOW_OK))
    _valid(resp, K, rec)
    assert resp.tier == "full" and resp.request_id == "req-1"
    assert set(resp.timings_ms) >= set(STAGES) | {"total"}
    assert set(rec.stage_names()) == set(STAGES)
    assert all(v >= 0 for v in resp.timings_ms.values())
    assert all(it.title and it.category for it in resp.items)
    # the per-category cap of the default policy holds (12 categories: enough to fill 10)
    assert max(Counter(it.category for it in resp.items).values()) <= rec.cfg.rerank.max_per_category
    assert resp.model_version == art.manifest.version


def test_unknown_user_gets_a_cold_start_feed(rec: Recommender):
    resp = rec.recommend(FeedRequest(user_id="never-seen-before", k=K, deadline_ms=SLOW_OK))
    _valid(resp, K, rec)
    assert resp.tier == "full"
    assert resp.request_id  # one is made up when the caller gives none


def test_impressions_are_never_served_again(rec: Recommender, art: ModelArtifacts):
    user = _known_user(art)
    shown: set[str] = set()
    for _ in range(4):
        resp = rec.recommend(FeedRequest(user_id=user, k=K))
        _valid(resp, K, rec)
        ids = {it.item_id for it in resp.items}
        assert not ids & shown
        shown |= ids
        rec.observe([_imp(user, i) for i in ids])
    # another user is not affected by this user's seen set
    other = rec.recommend(FeedRequest(user_id="someone-else", k=K))
    _valid(other, K, rec)


def test_items_another_worker_showed_are_left_out_like_own_seen_items(rec: Recommender, art: ModelArtifacts):
    """``FeedRequest.also_seen`` (a feed handed over by another worker, serving/offload.py):
    those items are not served, and the request does not add them to this state."""
    user = _known_user(art)
    first = rec.recommend(FeedRequest(user_id=user, k=K))
    shown = tuple(it.item_id for it in first.items)
    again = rec.recommend(FeedRequest(user_id=user, k=K, also_seen=shown))
    _valid(again, K, rec)
    assert not {it.item_id for it in again.items} & set(shown)
    assert rec.seen_items(user) == ()  # nothing observed here: the other worker's items stayed with the request
    rec.observe([_imp(user, i) for i in shown])
    assert set(rec.seen_items(user)) == set(shown)


def test_seen_filter_holds_in_the_fallback_tier_too(rec: Recommender, monkeypatch: pytest.MonkeyPatch):
    user = "fallback-user"
    first = rec.recommend(FeedRequest(user_id=user, k=K))
    rec.observe([_imp(user, it.item_id) for it in first.items])

    def broken(*a, **k):
        raise RuntimeError("ANN shard down")

    monkeypatch.setattr(rec.art.index, "search", broken)
    resp = rec.recommend(FeedRequest(user_id=user, k=K))
    assert resp.tier == "fallback"
    _valid(resp, K, rec)
    assert not {it.item_id for it in resp.items} & {it.item_id for it in first.items}


def test_clicks_update_the_history_and_change_the_feed(rec: Recommender, art: ModelArtifacts):
    user = "new-reader"
    before = rec.recommend(FeedRequest(user_id=user, k=K))
    cats = art.catalog.categories
    target = Counter(cats.tolist()).most_common()[-1][0]  # the least common category
    picks = [str(art.catalog.item_ids[i]) for i in np.flatnonzero(cats == target)[:8]]
    rec.observe([_imp(user, i, kind=EventKind.CLICK) for i in picks])
    ctx = rec.state.context(user)
    assert ctx.n_clicks == len(picks)
    assert [str(art.catalog.item_ids[i]) for i in ctx.history[-len(picks):]] == picks
    after = rec.recommend(FeedRequest(user_id=user, k=K))
    _valid(after, K, rec)
    assert [it.item_id for it in after.items] != [it.item_id for it in before.items]
    # clicks bump the item counters the ranker reads
    assert rec.state.item_clicks[art.catalog.index[picks[0]]] == art.snapshot.item_clicks[art.catalog.index[picks[0]]] + 1


def test_events_for_unknown_items_are_ignored(rec: Recommender):
    rec.observe([_imp("u-x", "no-such-item"), _imp("u-x", "no-such-item", kind=EventKind.CLICK)])
    assert rec.state.context("u-x").known is False


def test_reduced_tier_when_the_deadline_is_nearly_spent(rec: Recommender, art: ModelArtifacts):
    resp = rec.recommend(FeedRequest(user_id=_known_user(art), k=K, deadline_ms=0.001))
    assert resp.tier == "reduced"
    _valid(resp, K, rec)
    assert "rank" not in resp.timings_ms and "enrich" not in resp.timings_ms


def test_reduced_tier_when_the_bundle_has_no_ranker(art: ModelArtifacts):
    rec = Recommender(dataclasses.replace(art, ranker=None), clock=lambda: NOW)
    resp = rec.recommend(FeedRequest(user_id=_known_user(art), k=K))
    assert resp.tier == "reduced"
    _valid(resp, K, rec)
    scores = [it.score for it in resp.items]
    assert scores == sorted(scores, reverse=True)


def test_fallback_tier_when_retrieval_raises(rec: Recommender, art: ModelArtifacts, monkeypatch: pytest.MonkeyPatch):
    def broken(*a, **k):
        raise RuntimeError("ANN shard down")

    monkeypatch.setattr(rec.art.index, "search", broken)
    for user in (_known_user(art), "cold-user"):
        resp = rec.recommend(FeedRequest(user_id=user, k=K))
        assert resp.tier == "fallback"
        _valid(resp, K, rec)
        assert {it.source for it in resp.items} == {"popular"}


def test_has_item_and_get_item(rec: Recommender, art: ModelArtifacts):
    iid = str(art.catalog.item_ids[7])
    assert rec.has_item(iid) and not rec.has_item("nope")
    item = rec.get_item(iid)
    assert isinstance(item, Item) and item.item_id == iid
    assert item.category == art.catalog.categories[7] and item.title == art.catalog.titles[7]
    assert rec.get_item("nope") is None


def _no_exploration(art: ModelArtifacts):
    """The bundle's config with the exploration slot off (its random draw would label one
    item 'explore' in some requests; these tests are about where candidates come from)."""
    from feedrank.config import config_from_dict, config_to_dict

    raw = config_to_dict(art.cfg)
    raw["rerank"]["explore_epsilon"] = 0.0
    return config_from_dict(raw)


def test_far_future_now_is_filled_from_popular(art: ModelArtifacts):
    """A request a year ahead: every item is past the age limit, nothing is retrievable,
    and the feed is still full (from the popular list)."""
    assert art.info["max_item_age_s"] == MAX_AGE_H * 3600.0
    later = NOW + 365 * 86400.0
    rec = Recommender(art, _no_exploration(art), clock=lambda: later)  # the warm-up already sees the future
    resp = rec.recommend(FeedRequest(user_id=_known_user(art), k=K))
    _valid(resp, K, rec)
    assert {it.source for it in resp.items} == {"popular"}


def test_request_now_is_honoured_by_the_age_limit(art: ModelArtifacts):
    rec = Recommender(art, _no_exploration(art), clock=lambda: NOW)
    rec.recommend(FeedRequest(user_id=_known_user(art), k=K))          # now = NOW: fills the cache
    resp = rec.recommend(FeedRequest(user_id=_known_user(art), k=K, now=NOW + 365 * 86400.0))
    _valid(resp, K, rec)
    assert {it.source for it in resp.items} == {"popular"}


def test_far_future_now_still_answers_with_a_full_feed(rec: Recommender, art: ModelArtifacts):
    resp = rec.recommend(FeedRequest(user_id=_known_user(art), k=K, now=NOW + 365 * 86400.0))
    _valid(resp, K, rec)
    assert resp.tier in ("full", "reduced")


def test_concurrent_requests_and_events(rec: Recommender, art: ModelArtifacts):
    users = [_known_user(art), "t-cold-1", "t-cold-2", str(art.snapshot.user_ids[0])]
    errors: list[BaseException] = []
    served: list[FeedResponse] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        try:
            for j in range(25):
                user = users[(w + j) % len(users)]
                resp = rec.recommend(FeedRequest(user_id=user, k=K, deadline_ms=SLOW_OK))
                rec.observe([_imp(user, resp.items[0].item_id)])
                with lock:
                    served.append(resp)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(served) == 100
    for resp in served:
        _valid(resp, K, rec)
        assert resp.tier == "full"
    assert len({r.request_id for r in served}) == 100
