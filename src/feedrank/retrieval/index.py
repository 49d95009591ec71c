"""Approximate nearest-neighbour index over item vectors (FAISS, inner product).

``build_index(vectors, kind="auto")`` picks by corpus size:

    N < 100_000          Flat   exact search; a few ms per query up to ~100k x 32
    N < 5_000_000        HNSW   M=32, efSearch=128
    otherwise            IVF-PQ nlist=4*sqrt(N), m=out_dim/4 sub-quantisers, nprobe=32

Vectors are unit-norm, so inner product = cosine. Ids are catalogue indices (int64).
Indexes are saved with ``faiss.write_index`` (a plain binary format, no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from feedrank.errors import CorruptFile

FLAT_MAX = 100_000
HNSW_MAX = 5_000_000


class AnnIndex(Protocol):
    kind: str

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) float32 -> (scores (Q, k) float32, ids (Q, k) int64, -1 = none).
        ``allowed``: optional (M,) int64 ids; only those are returned."""
        ...

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None: ...

    def __len__(self) -> int: ...


class FaissIndex:
    """A FAISS index wrapped with its kind; ids are catalogue indices."""

    def __init__(self, index: faiss.Index, kind: str) -> None:
        self.index = index
        self.kind = kind

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        k = max(1, min(k, len(self)))
        if allowed is None:
            return self.index.search(q, k)
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        if len(allowed) == 0:
            return np.zeros((len(q), k), dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
        selector = faiss.IDSelectorBatch(allowed)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(128, k))
        elif self.kind == "ivfpq":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=32)
        else:
            params = faiss.SearchParameters(sel=selector)
        return self.index.search(q, k, params=params)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, kind: str) -> FaissIndex:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise CorruptFile(f"{path}: not a readable FAISS index: {exc}") from exc
        if kind == "hnsw":
            _set_hnsw_ef(index, 128)
        elif kind == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = 32
        return cls(index, kind)


def _set_hnsw_ef(index: faiss.Index, ef: int) -> None:
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = ef


def choose_kind(n: int, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if n < FLAT_MAX:
        return "flat"
    if n < HNSW_MAX:
        return "hnsw"
    return "ivfpq"


def build_index(vectors: np.ndarray, kind: str = "auto", ids: np.ndarray | None = None, seed: int = 0) -> FaissIndex:
    """Build an inner-product index over (N, D) float32 unit vectors."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    kind = choose_kind(n, kind)
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        index = faiss.IndexIDMap2(hnsw)
    elif kind == "ivfpq":
        nlist = int(max(16, min(65536, 4 * np.sqrt(max(n, 1)))))
        m = max(1, d // 4)
        while d % m:
            m -= 1
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFPQ(quant, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        train_n = min(n, max(nlist * 39, 256 * 39))
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, size=train_n, replace=False)] if train_n < n else x
        ivf.train(sample)
        ivf.nprobe = 32
        index = ivf
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat, hnsw, ivfpq, auto)")
    out = FaissIndex(index, kind)
    if kind == "hnsw":
        _set_hnsw_ef(index, 128)
    if n:
        out.add(x, ids)
    return out


def recall_against_exact(index: FaissIndex, vectors: np.ndarray, queries: np.ndarray, k: int = 100) -> float:
    """recall@k of ``index`` against exact inner-product search on the same vectors."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    k = min(k, len(vectors))
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    _, got = index.search(queries, k)
    hits = sum(len(set(t.tolist()) & set(g.tolist())) for t, g in zip(truth, got))
    return hits / float(truth.size)
