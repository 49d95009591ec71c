"""The re-rank stage tells candidates apart by catalogue row when every item id has one row
(no item was updated while serving): the same feeds as with the item ids, seen items
included; after an update (two rows share an id) it goes back to the ids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from feedrank.pipeline.artifacts import ModelArtifacts, load_artifacts
from feedrank.pipeline.recommender import Recommender
from feedrank.types import Event, EventKind, FeedRequest

NOW = float(os.environ["FEEDRANK_TEST_NOW"])


def _candidates(rec: Recommender, user: str):
    """Retrieved candidates with the user's seen items in front (retrieval leaves them out;
    the re-rank must drop them by itself)."""
    ctx = rec.state.context(user, NOW)
    cand = rec._retrieve(ctx, NOW)[0]
    seen = np.array(sorted(rec.catalog.index[i] for i in ctx.seen), dtype=np.int64)
    cand = np.concatenate([seen, cand[~np.isin(cand, seen)]])
    scores = np.linspace(1.0, 0.0, len(cand))
    return ctx, cand, scores, list(range(len(cand)))


def _show(rec: Recommender, user: str, n: int = 15) -> None:
    resp = rec.recommend(FeedRequest(user_id=user, k=n, now=NOW - 600.0, request_id=f"warm-{user}"))
    rec.observe([Event(event_id=f"{user}:{it.rank}", ts=NOW - 600.0, user_id=user, item_id=it.item_id,
                       kind=EventKind.IMPRESSION, position=it.rank - 1) for it in resp.items])


def test_rows_and_ids_give_the_same_feed(art: ModelArtifacts):
    rec = Recommender(art, clock=lambda: NOW)
    users = [str(u) for u in art.snapshot.user_ids[:6]] + ["nobody"]
    for u in users[:4]:
        _show(rec, u)  # seen items to drop
    dropped = 0
    for j, user in enumerate(users):
        ctx, cand, scores, order = _candidates(rec, user)
        ids = [rec._item_ids_list[i] for i in cand.tolist()]
        dropped += sum(i in ctx.seen for i in ids)
        for request_id in (f"r{j}", f"explore-{j}"):
            by_row = rec._rerank(cand, None, scores, order, ctx, 20, request_id)
            by_id = rec._rerank(cand, ids, scores, order, ctx, 20, request_id)
            assert by_row == by_id
            kept_ids = [ids[i] for i in by_row[0]]
            assert len(set(kept_ids)) == len(kept_ids) and not set(kept_ids) & ctx.seen
    assert dropped > 0  # the comparison covered seen candidates


def test_an_updated_item_switches_back_to_ids(model_dir: Path):
    rec = Recommender(load_artifacts(model_dir), clock=lambda: NOW)  # its own artifacts: add_items writes them
    item = str(rec.catalog.item_ids[int(np.argmax(rec.state.item_clicks))])
    old_row = rec.catalog.index[item]
    rec.add_items([{"item_id": item, "title": "Updated title", "category": str(rec.catalog.categories[old_row]),
                    "subcategory": "unknown", "creator": "c-upd", "published_at": NOW - 60.0, "expires_at": None}], now=NOW)
    assert len(rec.catalog.index) < len(rec.catalog)  # two rows hold the id now
    user = "nobody"
    ctx, cand, scores, order = _candidates(rec, user)
    cand = np.concatenate([[old_row, rec.catalog.index[item]], cand[~np.isin(cand, [old_row, rec.catalog.index[item]])]])
    scores, order = np.linspace(1.0, 0.0, len(cand)), list(range(len(cand)))
    kept, _ = rec._rerank(cand, None, scores, order, ctx, 20, "r-upd")
    kept_ids = [rec._item_ids_list[int(cand[i])] for i in kept]
    assert kept_ids.count(item) == 1 and len(set(kept_ids)) == len(kept_ids)  # the id is shown once
    resp = rec.recommend(FeedRequest(user_id=user, k=20, now=NOW, request_id="r-upd-2"))
    shown = [it.item_id for it in resp.items]
    assert len(shown) == 20 and len(set(shown)) == len(shown)
