"""A tiny trained model shared by the pipeline tests (trained once per session)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from feedrank.config import load_config
from feedrank.data.synth import WorldConfig, generate_world
from feedrank.pipeline.artifacts import ModelArtifacts, load_artifacts
from feedrank.pipeline.build import train_model
from feedrank.pipeline.recommender import Recommender

# One clock for the whole session, shared with the test modules through the environment
# (test modules cannot import conftest under --import-mode=importlib).
NOW = float(os.environ.setdefault("FEEDRANK_TEST_NOW", str(float(int(time.time() // 3600 * 3600)))))
MAX_AGE_H = 72.0
os.environ["FEEDRANK_TEST_MAX_AGE_H"] = str(MAX_AGE_H)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rec")
    generate_world(root / "world", WorldConfig(n_users=800, n_items=300, n_days=3, activity_mean=1.0, seed=2,
                                               start=NOW - 3 * 86400.0), progress=False)
    cfg = load_config(None, ["retrieval.epochs=2", "ranking.epochs=1", "retrieval.id_buckets=4096",
                             "retrieval.text_buckets=4096", f"retrieval.max_item_age_hours={MAX_AGE_H}",
                             "pipeline.ann_k=100", "pipeline.rank_max_candidates=200"])
    train_model(root / "world", root / "model", cfg, show_progress=False, say=lambda m: None)
    return root / "model"


@pytest.fixture(scope="session")
def art(model_dir: Path) -> ModelArtifacts:
    return load_artifacts(model_dir)


@pytest.fixture()
def rec(art: ModelArtifacts) -> Recommender:
    """A fresh recommender (its own online state) on the shared, read-only artifacts."""
    return Recommender(art, clock=lambda: NOW)


