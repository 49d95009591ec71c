"""The Recommender's candidate sources on the tiny shared model: trending follows observed
clicks, followed comes from repeated clicks on a creator, and a late source is dropped
with its quota filled from the fallbacks."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from feedrank.config import config_from_dict, config_to_dict
from feedrank.pipeline.artifacts import ModelArtifacts
from feedrank.pipeline.recommender import Recommender
from feedrank.retrieval.sources import SourceResult
from feedrank.types import Event, EventKind

NOW = float(os.environ["FEEDRANK_TEST_NOW"])


def _cfg(art: ModelArtifacts, age_prior: bool = True, **pipeline):
    raw = config_to_dict(art.cfg)
    raw["pipeline"].update(pipeline)
    raw["retrieval"]["age_prior"] = age_prior and raw["retrieval"]["age_prior"]
    return config_from_dict(raw)


def _retrieve(rec: Recommender, ctx, now: float):
    with torch.inference_mode():  # as Recommender.recommend runs it
        return rec._retrieve(ctx, now)


def _live_recent(rec: Recommender, now: float = NOW) -> np.ndarray:
    live = rec._live_items(now)
    live = np.arange(len(rec.catalog)) if live is None else live
    age = now - rec.catalog.published_at[live]
    return live[np.argsort(age, kind="stable")]


def test_trending_follows_observed_clicks(art: ModelArtifacts):
    # plain ANN: on this 300-item world the prior's popularity term would rank the clicked item into "ann" first;
    # a short ANN list (20 of 300) so that the context-only vector of a new user does not propose it either
    rec = Recommender(art, _cfg(art, age_prior=False, trending_k=20, ann_k=20), clock=lambda: NOW)
    later = NOW + 2 * 3600.0
    target = int(_live_recent(rec, later)[-1])  # an old item, still live then: not trending before
    iid = str(rec.catalog.item_ids[target])
    rec.observe([Event(event_id=f"t{j}", ts=NOW - 60.0, user_id=f"fan{j}", item_id=iid, kind=EventKind.CLICK)
                 for j in range(500)])
    got = rec._trending_list(NOW + 2 * 3600.0, rec._live_items(NOW))  # past the cache: recomputed
    assert got[0] == target
    ctx = rec.state.context("someone-new", NOW + 2 * 3600.0)
    cand, sources, _, _, _ = _retrieve(rec, ctx, NOW + 2 * 3600.0)
    assert "trending" in sources and target in cand.tolist()


def test_followed_source_returns_recent_items_of_followed_creators(art: ModelArtifacts):
    rec = Recommender(art, _cfg(art, followed_k=50, followed_hours=24 * 30.0), clock=lambda: NOW)
    recent = _live_recent(rec)
    creator = rec.catalog.creator_hash[recent[0]]
    same = [int(i) for i in recent if rec.catalog.creator_hash[i] == creator]
    user = "follower"
    clicked = same[:2] if len(same) >= 2 else [same[0], same[0]]
    for i in clicked:
        rec.observe([Event(event_id=f"f{i}-{time.time_ns()}", ts=NOW - 10.0, user_id=user,
                           item_id=str(rec.catalog.item_ids[i]), kind=EventKind.CLICK)])
    ctx = rec.state.context(user, NOW)
    _, aff = None, np.zeros(rec.n_categories + 1)
    followed = rec._source_fetchers(ctx, NOW, aff, rec._live_items(NOW))["followed"]()
    assert followed.name == "followed" and len(followed.items)
    subs = rec.catalog.sub_idx[clicked]
    subs = {int(subs[0])} if subs[0] == subs[1] else set()  # a topic needs 2 clicks too
    matching = [int(i) for i in recent if rec.catalog.creator_hash[i] == creator or rec.catalog.sub_idx[i] in subs]
    assert followed.items.tolist() == matching[:50]  # live, newest first, at most followed_k
    assert "followed" not in rec._source_fetchers(rec.state.context("nobody", NOW), NOW, aff, None)  # no history


def test_a_late_source_is_dropped_and_its_quota_filled(art: ModelArtifacts, monkeypatch):
    # plain ANN: the prior's recent pool and category share would take the fresh items into "ann" first
    rec = Recommender(art, _cfg(art, age_prior=False, source_budget_ms=5.0, fresh_k=40, trending_k=0, followed_k=0),
                      clock=lambda: NOW)
    user = str(art.snapshot.user_ids[int(np.argmax(art.snapshot.user_clicks))])
    ctx = rec.state.context(user, NOW)
    cand, sources, _, _, _ = _retrieve(rec, ctx, NOW)
    assert "fresh" in sources
    original = rec._source_fetchers

    def with_slow_fresh(*a, **k):
        fetchers = original(*a, **k)
        fast = fetchers["fresh"]

        def slow():
            time.sleep(0.3)  # 60x the budget: late on any machine
            return fast()
        fetchers["fresh"] = slow
        return fetchers

    monkeypatch.setattr(rec, "_source_fetchers", with_slow_fresh)
    cand2, sources2, _, _, _ = _retrieve(rec, ctx, NOW)
    assert "fresh" not in sources2
    assert len(cand2) == len(cand)  # the fallbacks filled the quota
    assert len(set(cand2.tolist())) == len(cand2)


def test_sources_keep_their_names_and_quotas_in_a_feed(art: ModelArtifacts):
    rec = Recommender(art, _cfg(art, fresh_k=5, trending_k=5, followed_k=5), clock=lambda: NOW)
    user = str(art.snapshot.user_ids[int(np.argmax(art.snapshot.user_clicks))])
    cand, sources, _, _, _ = _retrieve(rec, rec.state.context(user, NOW), NOW)
    counts = {s: sources.count(s) for s in set(sources)}
    assert counts.get("ann", 0) <= rec.cfg.pipeline.ann_k
    assert len(cand) == len(set(cand.tolist())) <= rec.cfg.pipeline.rank_max_candidates
    assert set(counts) <= {"ann", "fresh", "followed", "trending", "popular"}
    assert isinstance(SourceResult("x", cand, np.zeros(len(cand), np.float32)).items, np.ndarray)


def test_age_prior_is_fitted_at_build_and_pulls_the_ann_source_toward_new_items(art: ModelArtifacts):
    prior = art.info["age_prior"]
    assert prior is not None and prior["weight"] >= 0.0 and prior["n_clicks"] > 0
    user = str(art.snapshot.user_ids[int(np.argmax(art.snapshot.user_clicks))])
    on = Recommender(art, _cfg(art), clock=lambda: NOW)
    off = Recommender(art, config_from_dict({**config_to_dict(art.cfg), "retrieval": {
        **config_to_dict(art.cfg)["retrieval"], "age_prior": False}}), clock=lambda: NOW)
    assert off._age_prior() is None
    ages = {}
    for name, r in (("on", on), ("off", off)):
        cand, sources, _, _, _ = _retrieve(r, r.state.context(user, NOW), NOW)
        ann = cand[[s == "ann" for s in sources]]
        assert len(ann) == len(set(ann.tolist())) > 0
        ages[name] = float(np.mean(NOW - r.catalog.published_at[ann]))
    if prior["weight"] > 0:
        assert on._age_prior() is not None
        assert ages["on"] <= ages["off"]
