"""Serving scores a user without history with the prior's ``cold_user`` weights, as
``feedrank eval`` and the bench's served row do (``has_history``), clicks and the popular
list included when only those weights have a popularity term; a user with history keeps
the main weights."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from feedrank.pipeline.artifacts import ModelArtifacts
from feedrank.pipeline.recommender import Recommender
from feedrank.retrieval.prior import AgePrior
from feedrank.retrieval.served import RescorePool

NOW = float(os.environ["FEEDRANK_TEST_NOW"])


def test_a_user_without_history_gets_the_cold_user_weights(art: ModelArtifacts, monkeypatch):
    raw = dict(art.info["age_prior"])
    main = AgePrior.from_json(raw)
    cold = replace(main, pop_weight=2.0, cold_user=None)
    raw = replace(main, pop_weight=0.0, cold_user=cold).to_json()
    calls = []
    real = RescorePool.top

    def spy(self, prior, user_vec, ann_rows, *a, **k):
        calls.append((self.rows.copy(), k))
        return real(self, prior, user_vec, ann_rows, *a, **k)

    monkeypatch.setattr(RescorePool, "top", spy)
    rec = Recommender(replace(art, info={**art.info, "age_prior": raw}), clock=lambda: NOW)
    heavy = str(art.snapshot.user_ids[int(np.argmax(art.snapshot.user_clicks))])
    for user, has_history in (("nobody-seen-yet", False), (heavy, True)):
        calls.clear()
        ctx = rec.state.context(user, NOW)
        with torch.inference_mode():
            cand, *_ = rec._retrieve(ctx, NOW)
        (rows, k), = calls
        assert k["has_history"] is has_history
        assert (k["clicks"] is not None) is (not has_history)  # only the cold weights read clicks here
        # the pool holds the popular list too, as the bench's (popular_pool_size counts the cold weights)
        popular = rec._popular_list(NOW)[: rec.cfg.pipeline.ann_k]
        assert np.isin(rec._only_live(popular, NOW), rows).all()
        assert len(cand)
