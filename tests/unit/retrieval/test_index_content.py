"""Recall floor refusal, index thresholds from config, content vectors and their cache,
hard-negative pool sampling, per-epoch checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from feedrank.config import RetrievalConfig
from feedrank.features.content import ContentCache, HashedEncoder, content_key, encode_titles
from feedrank.features.history import ClickLog
from feedrank.retrieval.index import IndexParams, IndexRejected, build_index, check_recall, choose_kind
from feedrank.retrieval.train import ShownNotClicked


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_floor_refuses_a_poor_index():
    v = _unit(3000, 32)
    rng = np.random.default_rng(0)
    weak = build_index(v, "hnsw", params=IndexParams(hnsw_m=4, hnsw_ef_construction=8, hnsw_ef_search=4))
    with pytest.raises(IndexRejected, match="below the floor"):
        check_recall(weak, v, 0.99, rng)
    good = build_index(v, "flat")
    assert check_recall(good, v, 0.99, rng) == 1.0


def test_thresholds_come_from_params():
    p = IndexParams(flat_max_items=10, hnsw_max_items=100)
    assert [choose_kind(n, "auto", p) for n in (5, 50, 500)] == ["flat", "hnsw", "ivfpq"]
    assert IndexParams.from_config(RetrievalConfig(hnsw_ef_search=64)).hnsw_ef_search == 64


def test_hashed_content_vectors_share_words_and_cache(tmp_path):
    enc = HashedEncoder()
    v = enc.encode(["storm hits the coast", "storm hits the harbour", "election results tonight", ""])
    assert v.shape == (4, enc.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > 0.5 > abs(v[0] @ v[2])
    assert not v[3].any()

    class Counting(HashedEncoder):
        calls = 0

        def encode(self, titles):
            Counting.calls += len(titles)
            return super().encode(titles)

    counting = Counting(name="counting")
    cache = ContentCache(tmp_path)
    a = encode_titles(counting, ["a b", "c d", "a b"], cache)
    assert Counting.calls == 2  # duplicates encoded once
    again = encode_titles(counting, ["c d", "a b"], ContentCache(tmp_path))  # a fresh process reads the file
    assert Counting.calls == 2
    np.testing.assert_allclose(again, a[[1, 0]], atol=1e-3)
    assert content_key("x", "t") != content_key("y", "t")


def test_shown_not_clicked_samples_the_users_own_impressions():
    log = ShownNotClicked.build(np.array([0, 0, 1]), np.array([10.0, 20.0, 5.0]), np.array([7, 8, 9]), 3)
    got = log.sample(np.array([0, 1, 2, 0]), np.array([15.0, 6.0, 1.0, 100.0]), np.random.default_rng(0))
    assert got[0] in (7, 8) and got[1] == 9 and got[2] == -1 and got[3] in (7, 8)
    assert isinstance(log.log, ClickLog)
