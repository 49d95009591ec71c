"""The synthetic world's ranking ceilings (bench/ranking_ceiling.py) on a tiny world."""

from __future__ import annotations

import numpy as np

from feedrank.bench.ranking_ceiling import bayes_ceiling, oracle_ablation
from feedrank.config import FeedrankConfig
from feedrank.data.synth import WorldConfig, WorldTruth, generate_world
from feedrank.pipeline.build import prepare


def test_oracle_ablation_and_bayes_ceiling(tmp_path):
    out = tmp_path / "world"
    generate_world(out, WorldConfig(n_users=400, n_items=150, n_days=3, activity_mean=2.0, seed=5), progress=False)
    prep = prepare(out, FeedrankConfig(), say=lambda m: None)
    truth = WorldTruth.load(out)
    abl = oracle_ablation(prep, truth)
    assert abl["n_test"] > 1000
    # the user's preference is the oracle's main edge; removing it costs the most
    assert abl["oracle"]["auc"] > abl["population-mean preference"]["auc"] + 0.03
    assert abl["oracle"]["auc"] > abl["no item quality"]["auc"]
    ceil = bayes_ceiling(prep, truth, n_users=60, n_samples=300)
    assert ceil["n_test"] > 100 and ceil["knows"] == ["affinity", "quality"]
    # inferring preferences from the logs beats not knowing them and cannot beat knowing them
    assert 0.55 < ceil["bayes"]["auc"] < ceil["oracle"]["auc"] + 0.01, ceil
    blind = bayes_ceiling(prep, truth, n_users=60, n_samples=300, know=())
    assert blind["bayes"]["auc"] < ceil["bayes"]["auc"] + 0.01, (blind, ceil)
    assert np.isfinite([ceil["bayes"]["ndcg@10"], blind["bayes"]["ndcg@10"]]).all()
