"""The IVF index with float16 residuals (``ivfsq``, what ``auto`` picks from
``ivf_flat_min_items``): its layout, filter, adds, round trip with its own nprobe, recall
next to IVF-Flat on the same lists, and older IVF-Flat index files still loading."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from feedrank.config import RetrievalConfig
from feedrank.errors import CorruptFile
from feedrank.retrieval.index import (FaissIndex, IndexParams, build_index, check_recall, choose_kind,
                                     recall_against_exact)


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """Builds on one OpenMP thread: on a busy 2-core box, FAISS's spinning threads make a
    4,000-vector PQ build take seconds instead of ~0.1 s."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres: IVF lists that mean something, as real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _nprobe(idx: FaissIndex) -> int:
    return int(faiss.extract_index_ivf(idx.index).nprobe)


def test_auto_picks_ivfsq_from_ivf_flat_min_items_to_hnsw_max_items():
    p = IndexParams(flat_max_items=10, ivf_flat_min_items=100, hnsw_max_items=1000)
    assert [choose_kind(n, "auto", p) for n in (5, 50, 100, 999, 1000)] == ["flat", "hnsw", "ivfsq", "ivfsq", "ivfpq"]
    assert choose_kind(1_000_000) == "ivfsq" and choose_kind(999_999) == "hnsw"
    assert choose_kind(1_000_000, "ivfflat") == "ivfflat"  # the previous choice can still be asked for
    cfg = RetrievalConfig(ivf_sq_nprobe=40, ivf_flat_nprobe=20)
    assert (IndexParams.from_config(cfg).ivf_sq_nprobe, IndexParams.from_config(cfg).ivf_flat_nprobe) == (40, 20)


def test_ivfsq_stores_float16_residuals_in_half_the_bytes_at_ivfflat_recall():
    v = _clustered(6000, 32)
    sq = build_index(v, "ivfsq", params=IndexParams(ivf_sq_nprobe=8))
    flat = build_index(v, "ivfflat", params=IndexParams(ivf_flat_nprobe=8))
    ivf = faiss.downcast_index(sq.index)
    assert isinstance(ivf, faiss.IndexIVFScalarQuantizer) and ivf.by_residual
    assert ivf.sq.qtype == faiss.ScalarQuantizer.QT_fp16 and ivf.code_size == 2 * 32
    assert ivf.nlist == faiss.extract_index_ivf(flat.index).nlist and _nprobe(sq) == 8
    assert faiss.serialize_index(sq.index).nbytes < 0.65 * faiss.serialize_index(flat.index).nbytes
    queries = v[:100]
    r_sq, r_flat = recall_against_exact(sq, v, queries, k=50), recall_against_exact(flat, v, queries, k=50)
    assert r_flat > 0.5 and abs(r_sq - r_flat) <= 0.01  # same lists, float16 residuals lose next to nothing
    assert check_recall(sq, v, 0.5, np.random.default_rng(0), n_queries=50) == pytest.approx(
        recall_against_exact(sq, v, v[np.random.default_rng(0).choice(len(v), 50, replace=False)]), abs=1e-9)


def test_ivfsq_filters_adds_any_ids_and_round_trips_with_the_configured_nprobe(tmp_path):
    v = _clustered(3000, 16, seed=5)
    idx = build_index(v[:2500], "ivfsq", params=IndexParams(ivf_sq_nprobe=4))
    allowed = np.arange(400, 900)
    scores, ids = idx.search(v[:4], 10, allowed=allowed)
    assert np.isin(ids[ids >= 0], allowed).all() and (ids >= 0).any()
    _, ids = idx.search(v[400:402], 1, allowed=allowed)
    assert ids[:, 0].tolist() == [400, 401]
    assert idx.search(v[:2], 5, allowed=np.zeros(0, dtype=np.int64))[1].tolist() == [[-1] * 5] * 2
    idx.add(v[2500:], np.arange(2500, 3000))
    _, ids = idx.search(v[2900:2901], 1)
    assert ids[0, 0] == 2900 and len(idx) == 3000
    few = FaissIndex(idx.index, "ivfsq", IndexParams(ivf_sq_nprobe=1))
    every = FaissIndex(idx.index, "ivfsq", IndexParams(ivf_sq_nprobe=10_000))
    assert recall_against_exact(every, v, v[:60], k=20) >= 0.99  # all lists: exact up to float16 ties
    assert recall_against_exact(every, v, v[:60], k=20) > recall_against_exact(few, v, v[:60], k=20) + 0.05
    idx.save(tmp_path / "sq.faiss")
    again = FaissIndex.load(tmp_path / "sq.faiss", "ivfsq", IndexParams(ivf_sq_nprobe=12, ivf_flat_nprobe=3))
    assert again.kind == "ivfsq" and len(again) == 3000 and _nprobe(again) == 12
    assert np.array_equal(again.search(v[:5], 10)[1], FaissIndex(idx.index, "ivfsq", IndexParams(ivf_sq_nprobe=12))
                          .search(v[:5], 10)[1])


def test_an_older_ivfflat_index_file_still_loads_and_searches_with_its_own_nprobe(tmp_path):
    v = _clustered(2000, 16, seed=2)
    build_index(v, "ivfflat", params=IndexParams(ivf_flat_nprobe=64)).save(tmp_path / "old.faiss")
    old = FaissIndex.load(tmp_path / "old.faiss", "ivfflat", IndexParams(ivf_flat_nprobe=6, ivf_sq_nprobe=50))
    assert isinstance(faiss.downcast_index(old.index), faiss.IndexIVFFlat) and _nprobe(old) == 6
    _, ids = old.search(v[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]


def test_a_kind_the_file_does_not_hold_or_an_unknown_kind_is_a_clear_error(tmp_path):
    v = _clustered(500, 8)
    build_index(v, "flat").save(tmp_path / "flat.faiss")
    with pytest.raises(CorruptFile, match="says 'ivfsq'.*no IVF index"):
        FaissIndex.load(tmp_path / "flat.faiss", "ivfsq")
    with pytest.raises(CorruptFile, match="unknown index kind 'ivf-sq'"):
        FaissIndex.load(tmp_path / "flat.faiss", "ivf-sq")
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        build_index(v, "annoy")
    with pytest.raises(ValueError, match="ivf_sq_nprobe must be >= 1"):
        IndexParams(ivf_sq_nprobe=0)


def test_the_speed_bench_sweeps_ivfsq_nprobe_into_the_search():
    from feedrank.bench.retrieval import run_speed

    out = run_speed(n_items=3000, dim=16, n_queries=20, kinds=("flat", "ivfsq"), nprobe=(1, 64), say=lambda m: None)
    row = out["kinds"]["ivfsq"]
    assert [s["value"] for s in row["settings"]] == [1, 64] and row["nlist"] > 64
    assert row["settings"][1]["recall@100_vs_exact"] > row["settings"][0]["recall@100_vs_exact"] + 0.1
    assert row["index_mb"] < out["kinds"]["flat"]["index_mb"]


def test_the_serving_k_bench_builds_factory_candidates_and_passes_their_search_parameters():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "ann_serving_k.py"
    spec = importlib.util.spec_from_file_location("ann_serving_k", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    v = _clustered(4000, 16, seed=7)
    sq = mod.build_factory("IVF32,SQfp16", v)
    assert isinstance(faiss.downcast_index(sq), faiss.IndexIVFScalarQuantizer) and sq.ntotal == 4000
    refined = mod.build_factory("IVF32,PQ8x4fs,RFlat", v)
    prm = mod._search_params(refined, 32, 4, 0)
    assert isinstance(prm, faiss.IndexRefineSearchParameters) and prm.k_factor == 4.0
    _, ids = refined.search(v[:3], 5, params=prm)
    assert ids[:, 0].tolist() == [0, 1, 2]  # every list probed and a float re-rank: each finds itself
    assert mod._search_params(sq, 3, None, 0).nprobe == 3
    with pytest.raises(SystemExit, match="not a FAISS index_factory string"):
        mod.build_factory("IVF32,Nonsense", v)
    with pytest.raises(SystemExit, match="integers"):
        mod._ints("32,x")
