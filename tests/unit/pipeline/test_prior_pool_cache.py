"""The retrieve stage keeps the prior's rescoring pool (rows, vectors, publish times) while its
rows stay the same, and rebuilds it when they change (an item posted while serving)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.recommender import Recommender
from feedrank.retrieval.prior import rescore_with_prior
from feedrank.retrieval.served import PRIOR_POOL_MAX
from feedrank.retrieval.sources import sorted_unique

NOW = float(os.environ["FEEDRANK_TEST_NOW"])


def _pool_rows(rec: Recommender, prior, now: float) -> np.ndarray:
    """The straightforward pool: the newest live rows (+ the live popular top)."""
    p = rec.cfg.pipeline
    rows = rec._newest(None, None, now, max(p.fresh_hours, p.followed_hours) * 3600.0, PRIOR_POOL_MAX)
    if prior.pop_weight > 0:
        rows = sorted_unique(rows, rec._only_live(rec._popular_list(now)[: p.ann_k], now))
    return sorted_unique(rows)


def test_prior_pool_is_reused_then_rebuilt_after_an_item_add(model_dir: Path):
    rec = Recommender(load_artifacts(model_dir), clock=lambda: NOW)  # its own artifacts: add_items writes them
    prior = rec._age_prior()
    if prior is None:
        pytest.skip("the tiny model fitted no active prior")
    first = rec._prior_pool(prior, NOW)
    assert rec._prior_pool(prior, NOW) is first
    np.testing.assert_array_equal(first.rows, _pool_rows(rec, prior, NOW))
    np.testing.assert_array_equal(first.vectors, rec.art.item_vectors[first.rows])
    cat = str(rec.catalog.categories[0])
    rec.add_items([{"item_id": "pool-new", "title": "Storm closes the harbour", "category": cat,
                    "subcategory": "unknown", "creator": "c-new", "published_at": NOW - 60.0, "expires_at": None}], now=NOW)
    row = rec.catalog.index["pool-new"]
    again = rec._prior_pool(prior, NOW)
    assert again is not first and row in again.rows.tolist()
    np.testing.assert_array_equal(again.rows, _pool_rows(rec, prior, NOW))
    np.testing.assert_array_equal(again.vectors, rec.art.item_vectors[again.rows])
    # the retrieve stage's ANN list equals rescoring the gathered union afresh
    user = str(rec.art.snapshot.user_ids[int(np.argmax(rec.art.snapshot.user_clicks))])
    ctx = rec.state.context(user, NOW)
    with torch.inference_mode():
        cand, sources, scores, user_vec, aff = rec._retrieve(ctx, NOW)
    p = rec.cfg.pipeline
    _, ids = rec.art.index.search(user_vec[None, :], p.ann_k * p.ann_oversample, allowed=rec._live_items(NOW))
    ann = rec._only_live(ids[0][ids[0] >= 0].astype(np.int64), NOW)
    union = sorted_unique(ann, _pool_rows(rec, prior, NOW))
    want, want_s = rescore_with_prior(prior, user_vec, union, rec.art.item_vectors[union], rec.catalog.published_at[union],
                                      NOW, p.ann_k, clicks=rec.state.item_clicks[union],
                                      affinity=prior.category_share(ctx.history, rec.catalog.cat_idx),  # the prior's
                                      categories=rec.catalog.cat_idx[union])  # category term's inputs
    is_ann = np.array([s == "ann" for s in sources])
    kept = np.isin(want, cand[is_ann])  # the merge drops seen items; the rest keep their order and scores
    np.testing.assert_array_equal(cand[is_ann], want[kept])
    np.testing.assert_allclose(scores[is_ann], want_s[kept], rtol=1e-6, atol=1e-6)


def test_live_set_and_popular_list_share_one_liveness_pass(art, monkeypatch):
    rec = Recommender(art, clock=lambda: NOW)
    if rec.live_catalog.always_live:
        pytest.skip("every row is always live: no liveness pass")
    full = []
    mask = rec.live_catalog.mask

    def counting(rows, now):
        if len(rows) == len(rec.catalog):
            full.append(now)
        return mask(rows, now)

    monkeypatch.setattr(rec.live_catalog, "mask", counting)
    later = NOW + 3600.0  # past every cache
    live = rec._live_items(later)
    rec._popular_list(later)
    assert full == [later]
    want = np.flatnonzero(mask(np.arange(len(rec.catalog)), later))
    np.testing.assert_array_equal(live, want)
    assert rec._popular_list(later) is rec._popular_list(later)
