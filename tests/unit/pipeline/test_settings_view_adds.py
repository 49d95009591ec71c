"""A settings view (an experiment arm, ``Recommender.with_settings``) made before an item add
keeps serving after it: it takes the base's grown catalogue, and its popular list and live
set are rebuilt, instead of mixing the old catalogue's arrays with the grown counters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.recommender import Recommender
from feedrank.types import FeedRequest

NOW = float(os.environ["FEEDRANK_TEST_NOW"])


def test_view_made_before_an_add_serves_the_grown_catalogue(model_dir: Path):
    art = load_artifacts(model_dir)  # its own artifacts: add_items writes them
    art.info["max_item_age_s"] = None  # every row live: the popular list covers the whole catalogue
    now = float(np.nanmax(art.catalog.published_at)) + 1800.0
    rec = Recommender(art, clock=lambda: now)
    view = rec.with_settings([("rerank.max_per_creator", 3)])
    assert view.cfg.rerank.max_per_creator == 3 and rec.cfg.rerank.max_per_creator != 3
    user = str(art.snapshot.user_ids[0])
    view.recommend(FeedRequest(user_id=user, k=10, now=now, request_id="before"))  # its caches hold the old size
    n_before = len(rec.catalog)
    base = rec.recommend(FeedRequest(user_id=user, k=10, now=now, request_id="b"))
    records = [{"item_id": f"view-new-{i}", "title": it.title, "category": it.category, "subcategory": "unknown",
                "creator": f"c-new-{i}", "published_at": now, "expires_at": None} for i, it in enumerate(base.items)]
    rec.add_items(records, now=now)
    assert len(view.catalog) == len(rec.catalog) == n_before + len(records)
    assert view.cfg.rerank.max_per_creator == 3  # its own settings are kept
    for j, uid in enumerate(str(u) for u in art.snapshot.user_ids[:20]):
        got = view.recommend(FeedRequest(user_id=uid, k=10, now=now + 1, request_id=f"v{j}"))
        assert got.tier == "full", (uid, got.tier)
    # an expiry moved on the base reaches the view: the expired item is never served by it
    gone = records[0]["item_id"]
    rec.set_expiry({gone: now - 1.0})
    for j, uid in enumerate(str(u) for u in art.snapshot.user_ids[:20]):
        got = view.recommend(FeedRequest(user_id=uid, k=10, now=now + 2, request_id=f"e{j}"))
        assert gone not in [it.item_id for it in got.items]
