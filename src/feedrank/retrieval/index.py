"""Approximate nearest-neighbour index over item vectors (FAISS, inner product).

``build_index(vectors, kind="auto", params=IndexParams(...))`` picks by corpus size
(thresholds and parameters are ``retrieval.*`` config; measured in docs/retrieval.md):

    N < flat_max_items       (100k)  Flat     exact; ~1 ms per query at 100k x 32-d on one core
    N < ivf_flat_min_items   (1M)    HNSW     M=32, efConstruction=80, efSearch=128
    N < hnsw_max_items       (5M)    IVF-SQ   nlist=2*sqrt(N), nprobe=ivf_sq_nprobe (64), residuals to
                                     the list centroid stored as float16 (64 bytes per 32-d vector)
    otherwise                        IVF-PQ   nlist=4*sqrt(N), m=out_dim/4 sub-quantisers, nprobe=32,
                                     re-ranked from 8-bit scalar-quantised vectors (k_factor ivf_refine=4)

``ivfflat`` (the same lists, float32 vectors, nprobe=ivf_flat_nprobe) is what auto picked from
1M before ``ivfsq``; bundles holding one keep loading and serving it, and
``retrieval.index=ivfflat`` still builds it.

Why an IVF from 1M: serving asks for ``ann_k * ann_oversample`` (600) neighbours, and an HNSW
search costs about efSearch >= k, where an IVF scan costs the lists it probes whatever k is
(1M x 32-d bench bundle, 1,000 serving user vectors, k = 600, one thread: HNSW efSearch 600
1.14 ms CPU per query at recall@100 0.942 vs exact; IVF-Flat nlist 2000, nprobe 64 0.48 ms at
0.973 in that run (0.72 ms in the interleaved run below, at another load: compare figures
within one run only); only 1M was measured, so HNSW stays below it).

Why float16 residuals (``ivfsq``): the scan streams the probed lists' codes (33k vectors per
query at nprobe 64), so half the bytes per vector is ~25% less CPU per query at k = 600
(0.54 vs 0.72 ms, interleaved) at the same recall (0.973 vs exact, identical served lists) and
half the memory; float16 keeps ~11 bits per component, which the neighbours of these
embeddings need: on the bench bundle a serving query's top 600 exact scores lie within ~0.006
(ranks 100 and 600 within 0.002), and 8-bit scalar codes (recall@100 0.935),
4-bit PQ FastScan (at most 0.76, with a 4x float re-rank), RaBitQ and more lists behind an
HNSW or flat coarse quantiser all lost recall or CPU (docs/retrieval.md, "IVF-SQ from 1M";
``benchmarks/ann_serving_k.py``).

``check_recall(index, vectors, floor)`` measures recall@100 against exact search on a
sample of item vectors used as queries, and raises ``IndexRejected`` below the floor:
such an index is never published in a bundle.

Vectors are unit-norm, so inner product = cosine. Ids are catalogue indices (int64).
Indexes are saved with ``faiss.write_index`` (a plain binary format, no pickle).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from feedrank.errors import CorruptFile, FeedrankError

FLAT_MAX = 100_000
IVF_FLAT_MIN = 1_000_000  # from here to HNSW_MAX: IVF-SQ (module docstring)
HNSW_MAX = 5_000_000
IVF_FLAT_NPROBE = 64
IVF_SQ_NPROBE = 64
KINDS = ("flat", "hnsw", "ivfflat", "ivfsq", "ivfpq")


class IndexRejected(FeedrankError):
    """The index's recall@100 against exact search is below the configured floor."""


@dataclass(frozen=True)
class IndexParams:
    flat_max_items: int = FLAT_MAX
    hnsw_max_items: int = HNSW_MAX
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 32
    ivf_refine: int = 4  # IVF-PQ: re-rank k * ivf_refine PQ hits with 8-bit scalar-quantised vectors (0 = off)
    ivf_flat_min_items: int = IVF_FLAT_MIN  # IVF-SQ (auto) from here up to hnsw_max_items (HNSW below)
    ivf_flat_nprobe: int = IVF_FLAT_NPROBE  # lists an ``ivfflat`` search probes
    ivf_sq_nprobe: int = IVF_SQ_NPROBE  # lists an ``ivfsq`` search probes

    def __post_init__(self) -> None:
        for name in ("hnsw_m", "hnsw_ef_search", "ivf_nprobe", "ivf_flat_nprobe", "ivf_sq_nprobe"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"IndexParams.{name} must be >= 1, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, cfg) -> IndexParams:
        """From a ``RetrievalConfig``."""
        return cls(flat_max_items=cfg.flat_max_items, hnsw_max_items=cfg.hnsw_max_items, hnsw_m=cfg.hnsw_m,
                   hnsw_ef_construction=80, hnsw_ef_search=cfg.hnsw_ef_search, ivf_nprobe=cfg.ivf_nprobe,
                   ivf_refine=cfg.ivf_refine, ivf_flat_min_items=cfg.ivf_flat_min_items,
                   ivf_flat_nprobe=cfg.ivf_flat_nprobe, ivf_sq_nprobe=cfg.ivf_sq_nprobe)

    def nprobe(self, kind: str) -> int | None:
        """The lists a search of an IVF ``kind`` probes (None for the other kinds)."""
        return {"ivfflat": self.ivf_flat_nprobe, "ivfsq": self.ivf_sq_nprobe, "ivfpq": self.ivf_nprobe}.get(kind)


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

    def __init__(self, index: faiss.Index, kind: str, params: IndexParams | None = None) -> None:
        self.index = index
        self.kind = kind
        self.params = params or IndexParams()
        # FAISS releases the GIL in search and add, and adding to an HNSW graph or IVF lists
        # while a search walks them is undefined: POST /v1/items and item sync add from other
        # threads than the request path's. Uncontended, the lock costs ~0.1 us per search.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._search(queries, k, allowed)

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        k = max(1, min(k, len(self)))
        if allowed is None:
            if self.kind == "hnsw":  # efSearch below k would return fewer good neighbours than asked
                return self.index.search(q, k, params=faiss.SearchParametersHNSW(efSearch=max(self.params.hnsw_ef_search, k)))
            if self.kind in ("ivfflat", "ivfsq"):  # the nprobe travels with each search
                return self.index.search(q, k, params=faiss.SearchParametersIVF(nprobe=self.params.nprobe(self.kind)))
            return self.index.search(q, k)
        if len(allowed) == 0:
            return np.zeros((len(q), k), dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
        selector = self._selector(allowed)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.params.hnsw_ef_search, k))
        elif self.kind in ("ivfflat", "ivfsq"):
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.params.nprobe(self.kind))
        elif self.kind == "ivfpq":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.params.ivf_nprobe)
            if isinstance(self.index, faiss.IndexRefine):
                params = faiss.IndexRefineSearchParameters(k_factor=float(self.index.k_factor), base_index_params=params)
        else:
            params = faiss.SearchParameters(sel=selector)
        return self.index.search(q, k, params=params)

    def _selector(self, allowed: np.ndarray) -> faiss.IDSelector:
        """A bitmap selector for ``allowed`` ids, cached while the same array object and
        index size are passed (the pipeline caches its live set): building one is O(N/8)
        bytes, ~1.5 ms at 1M items, where ``IDSelectorBatch`` costs ~50 ms at 1M."""
        key = (id(allowed), len(allowed), len(self))
        cached = getattr(self, "_sel_cache", None)
        if cached is not None and cached[0] == key and cached[1] is allowed:
            return cached[2]
        ids = np.asarray(allowed, dtype=np.int64)
        n_bits = int(max(len(self), int(ids.max()) + 1 if len(ids) else 0, 1))
        mask = np.zeros(n_bits, dtype=bool)
        mask[ids[ids >= 0]] = True
        bitmap = np.packbits(mask, bitorder="little")
        # ids beyond the bitmap never reach it: ids are catalogue rows < len(self) <= n_bits
        selector = faiss.IDSelectorBitmap(n_bits, faiss.swig_ptr(bitmap))
        selector._bitmap = bitmap  # keep the buffer alive as long as the selector
        self._sel_cache = (key, allowed, selector)
        return selector

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        x, ids = np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        with self._lock:  # never while a search walks the structure (see __init__)
            self._sel_cache = None
            if isinstance(self.index, faiss.IndexRefine):  # no id map: ids are the next catalogue rows, in order
                if not np.array_equal(ids, np.arange(len(self), len(self) + len(ids))):
                    raise ValueError(f"this {self.kind} index takes ids {len(self)}.. in order, got {ids[:5].tolist()}...")
                self.index.add(x)
                return
            self.index.add_with_ids(x, ids)

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, kind: str, params: IndexParams | None = None) -> FaissIndex:
        params = params or IndexParams()
        if kind not in KINDS:
            raise CorruptFile(f"{path}: unknown index kind {kind!r} (one of {', '.join(KINDS)})")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise CorruptFile(f"{path}: not a readable FAISS index: {exc}") from exc
        if kind == "hnsw":
            _set_hnsw_ef(index, params.hnsw_ef_search)
        elif kind in ("ivfpq", "ivfflat", "ivfsq"):
            try:
                faiss.extract_index_ivf(index).nprobe = params.nprobe(kind)
            except RuntimeError as exc:
                raise CorruptFile(f"{path}: the manifest says {kind!r} but the file holds a "
                                  f"{type(faiss.downcast_index(index)).__name__}, no IVF index") from exc
        return cls(index, kind, params)


def _set_hnsw_ef(index: faiss.Index, ef: int) -> None:
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = ef


def choose_kind(n: int, requested: str = "auto", params: IndexParams | None = None) -> str:
    """The index kind for ``n`` items: ``requested`` unless it is "auto"."""
    p = params or IndexParams()
    if requested != "auto":
        return requested
    if n < p.flat_max_items:
        return "flat"
    if n < min(p.ivf_flat_min_items, p.hnsw_max_items):
        return "hnsw"
    if n < p.hnsw_max_items:
        return "ivfsq"
    return "ivfpq"


def train_sample(x: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """The k-means training sample of an IVF index: 39 points per list (FAISS's minimum
    without a warning), at least 256 * 39, at most all of ``x``."""
    n = len(x)
    train_n = min(n, max(nlist * 39, 256 * 39))
    rng = np.random.default_rng(seed)
    return x[rng.choice(n, size=train_n, replace=False)] if train_n < n else x


def build_index(vectors: np.ndarray, kind: str = "auto", ids: np.ndarray | None = None, seed: int = 0,
                params: IndexParams | None = None) -> FaissIndex:
    """Build an inner-product index over (N, D) float32 unit vectors; ids default to 0..N-1."""
    p = params or IndexParams()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    kind = choose_kind(n, kind, p)
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = p.hnsw_ef_construction
        index = faiss.IndexIDMap2(hnsw)
    elif kind in ("ivfflat", "ivfsq"):
        nlist = int(max(16, min(65536, 2 * np.sqrt(max(n, 1)))))
        if kind == "ivfflat":
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:  # float16 residuals to the list centroid (module docstring: why not 8 bits or PQ)
            index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                  faiss.METRIC_INNER_PRODUCT, True)
        index.train(train_sample(x, nlist, seed))
        index.nprobe = p.nprobe(kind)
    elif kind == "ivfpq":
        nlist = int(max(16, min(65536, 4 * np.sqrt(max(n, 1)))))
        m = max(1, d // 4)
        while d % m:
            m -= 1
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFPQ(quant, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        sample = train_sample(x, nlist, seed)
        ivf.nprobe = p.ivf_nprobe
        index = ivf
        if p.ivf_refine > 0:  # PQ codes alone cap recall@100 (~0.6 at 1M x 64-d): re-rank with SQ8 vectors
            index = faiss.IndexRefine(ivf, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit,
                                                                      faiss.METRIC_INNER_PRODUCT))
            index.k_factor = float(p.ivf_refine)
        index.train(sample)
    else:
        raise ValueError(f"unknown index kind {kind!r} ({', '.join(KINDS)}, auto)")
    out = FaissIndex(index, kind, p)
    if kind == "hnsw":
        _set_hnsw_ef(index, p.hnsw_ef_search)
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


def check_recall(index: FaissIndex, vectors: np.ndarray, floor: float, rng: np.random.Generator,
                 n_queries: int = 200, k: int = 100) -> float:
    """recall@k of ``index`` vs exact search, queries = ``n_queries`` sampled item vectors
    (N, D). Raises ``IndexRejected`` when it is below ``floor``; returns it otherwise."""
    if len(vectors) == 0:
        return 1.0
    sample = vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)]
    recall = recall_against_exact(index, vectors, sample, k=k)
    if recall < floor:
        raise IndexRejected(f"{index.kind} index recall@{k} vs exact is {recall:.3f}, below the floor {floor:.3f}; "
                            "not published (raise retrieval.hnsw_ef_search / ivf_nprobe / ivf_flat_nprobe / ivf_sq_nprobe, "
                            "or use retrieval.index=flat)")
    return recall
