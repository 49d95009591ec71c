"""`feedrank eval` scores retrieval as serving does: the ANN's top, the recent pool and the
popular list rescored with the bundle's fitted prior (retrieval/served.py), with the ANN
alone kept as `retrieval_tower`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import feedrank.evaluation.offline as offline
from feedrank.config import load_config
from feedrank.data.synth import WorldConfig, generate_world
from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.build import prepare, train_model
from feedrank.retrieval.counters import ItemCounters
from feedrank.retrieval.prior import AgePrior
from feedrank.retrieval.served import popular_pool_size, prior_pool, served_top


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("evalserved")
    generate_world(root / "world", WorldConfig(n_users=300, n_items=120, n_days=3, activity_mean=1.0, seed=4),
                   progress=False)
    cfg = load_config(None, ["retrieval.epochs=1", "ranking.epochs=1", "retrieval.id_buckets=1024",
                             "retrieval.text_buckets=1024", "pipeline.ann_k=50", "pipeline.rank_max_candidates=100"])
    train_model(root / "world", root / "model", cfg, show_progress=False, say=lambda m: None)
    art = load_artifacts(root / "model")
    return art, prepare(root / "world", art.cfg, vocabs=art.vocabs, say=lambda m: None)


def test_eval_retrieval_is_the_served_score_and_keeps_the_tower_row(bundle, monkeypatch):
    art, prep = bundle
    prior = AgePrior(weight=5.0, temperature=art.cfg.retrieval.temperature, ref_ts=0.0, pop_weight=2.0)
    art.info["age_prior"] = prior.to_json()   # a strong prior: served lists must differ from the ANN's
    calls = []
    real = offline.served_top

    def spy(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(offline, "served_top", spy)
    out = offline.evaluate_prepared(art, prep, say=lambda m: None)
    assert len(calls) == out["retrieval"]["n_users"] > 0
    assert all(c.weight == 5.0 and c.pop_weight == 2.0 for c in calls)
    assert out["retrieval"]["scoring"].startswith("served")
    keys = ("recall@10", "recall@100", "ndcg@10")
    assert [out["retrieval"][k] for k in keys] != [out["retrieval_tower"][k] for k in keys]  # the served lists were scored

    # with the prior switched off, eval scores the ANN alone, like serving does then
    calls.clear()
    art_off = replace(art, cfg=replace(art.cfg, retrieval=replace(art.cfg.retrieval, age_prior=False)))
    off = offline.evaluate_prepared(art_off, prep, say=lambda m: None)
    assert not calls and off["retrieval"]["scoring"].startswith("ANN")
    assert off["retrieval"]["recall@100"] == pytest.approx(off["retrieval_tower"]["recall@100"])


def test_served_top_is_the_exact_prior_ranking_over_ann_top_and_pool():
    rng = np.random.default_rng(0)
    n = 200
    vecs = rng.standard_normal((n, 8)).astype(np.float32)
    pub = rng.uniform(0, 10 * 86400, n)
    clicks = rng.integers(0, 30, n).astype(float)
    prior = AgePrior(0.5, 0.1, 0.0, pop_weight=0.7)
    u = rng.standard_normal(8).astype(np.float32)
    now = 10 * 86400.0
    live = pub > 2 * 86400
    pool = prior_pool(pub, live, now, 24.0, clicks, popular_pool_size(prior, 20))
    assert set(np.flatnonzero(live & (pub >= now - 86400)).tolist()) <= set(pool.tolist())
    assert live[pool].all()
    ann = np.argsort(-(vecs @ u))[:30]
    past = ann[:3]
    got = served_top(prior, u, ann, pool, vecs, pub, now, 10, ItemCounters(clicks), past)
    cand = np.setdiff1d(np.union1d(ann, pool), past)
    exact = prior.scores(u[None, :], vecs[cand], pub[cand], now, clicks=clicks[cand])[0]
    assert got.tolist() == cand[np.lexsort((cand, -exact))][:10].tolist()
    assert popular_pool_size(AgePrior(0.5, 0.1, 0.0), 20) == 0
