"""Candidate sources besides ANN, and the merger that applies quotas and dedupes.

Sources return catalogue indices in their own order of preference. ``merge_sources``
interleaves them under per-source quotas, keeps the first source that proposed an item,
and fills from the fallback source when the others come up short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SourceResult:
    name: str
    items: np.ndarray      # (n,) int64 catalogue indices, best first
    scores: np.ndarray     # (n,) float32, source-specific


def popular_items(click_counts: np.ndarray, age_s: np.ndarray, k: int, half_life_s: float = 3 * 86400.0) -> np.ndarray:
    """Top-``k`` item indices by clicks discounted by age (recent popularity)."""
    score = np.log1p(click_counts.astype(np.float64)) * np.exp2(-np.maximum(age_s, 0.0) / half_life_s)
    score = score + 1e-9 * click_counts  # tie-break by raw clicks
    k = min(k, len(score))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-score, k - 1)[:k]
    return top[np.argsort(-score[top], kind="stable")].astype(np.int64)


def fresh_items(published_at: np.ndarray, now: float, max_age_s: float, categories: np.ndarray,
                wanted_categories: np.ndarray | None, k: int) -> np.ndarray:
    """Newest items published within ``max_age_s`` of ``now`` (and not in the future),
    restricted to ``wanted_categories`` when given; newest first."""
    age = now - published_at
    ok = (age >= 0) & (age <= max_age_s)
    if wanted_categories is not None and len(wanted_categories):
        ok &= np.isin(categories, wanted_categories)
    idx = np.flatnonzero(ok)
    if len(idx) > k:
        idx = idx[np.argpartition(age[idx], k - 1)[:k]]
    return idx[np.argsort(age[idx], kind="stable")].astype(np.int64)


def merge_sources(results: list[SourceResult], quotas: dict[str, int], total: int, fallback: str | None = None,
                  exclude: set[int] | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Merge sources under quotas; dedupe (first source wins); fill from ``fallback``.

    Returns (items (n,) int64, source name per item, retrieval score per item)."""
    exclude = exclude or set()
    seen: set[int] = set()
    out_items: list[int] = []
    out_src: list[str] = []
    out_score: list[float] = []
    by_name = {r.name: r for r in results}
    for r in results:
        quota = quotas.get(r.name, total)
        taken = 0
        for it, sc in zip(r.items.tolist(), r.scores.tolist()):
            if taken >= quota or len(out_items) >= total:
                break
            if it in seen or it in exclude:
                continue
            seen.add(it)
            out_items.append(it)
            out_src.append(r.name)
            out_score.append(sc)
            taken += 1
    if fallback is not None and len(out_items) < total and fallback in by_name:
        fb = by_name[fallback]
        for it, sc in zip(fb.items.tolist(), fb.scores.tolist()):
            if len(out_items) >= total:
                break
            if it in seen or it in exclude:
                continue
            seen.add(it)
            out_items.append(it)
            out_src.append(fallback)
            out_score.append(sc)
    return np.asarray(out_items, dtype=np.int64), out_src, np.asarray(out_score, dtype=np.float32)
