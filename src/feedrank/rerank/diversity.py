"""Diversity: maximal marginal relevance over item vectors, and caps per key (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cap_split(order: Sequence[int], caps: Sequence[tuple[Sequence[str], int]]) -> tuple[list[int], list[int]]:
    """One greedy pass under several caps at once, e.g. ``[(categories, 3), (creators, 2)]``.

    Returns (kept, skipped): ``kept`` is in order and, as a whole, holds at most ``cap``
    entries per key of every cap; ``skipped`` are the rest, in order."""
    rules = [({}, keys, cap) for keys, cap in caps]  # (counts per key, keys, cap); a plain loop: hot at serving
    kept: list[int] = []
    skipped: list[int] = []
    for i in order:
        for counts, keys, cap in rules:
            if counts.get(keys[i], 0) >= cap:
                skipped.append(i)
                break
        else:
            for counts, keys, _ in rules:
                key = keys[i]
                counts[key] = counts.get(key, 0) + 1
            kept.append(i)
    return kept, skipped


def cap_per_key(order: Sequence[int], keys: Sequence[str], max_per_key: int, k: int) -> list[int]:
    """Take entries in order while their key (category, creator, ...) is under the cap; if
    fewer than ``k`` result, top up with the best skipped entries. At most ``k`` entries."""
    kept, skipped = cap_split(order, [(keys, max_per_key)])
    return (kept + skipped)[:k]


def mmr(order: Sequence[int], scores: np.ndarray, vectors: np.ndarray, k: int, lam: float, pool: int = 100) -> list[int]:
    """Greedy MMR over the first ``pool`` entries of ``order``:
    pick argmax ``lam * score_norm - (1 - lam) * max cosine to the picked``.

    ``scores`` (n,) are min-max normalised over the pool; ``vectors`` (n, d) unit norm.
    Returns the whole list reordered (``lam = 1``: unchanged); entries beyond the pool and
    after the ``k`` picks follow in their original order."""
    order = list(order)
    if lam >= 1.0 or len(order) <= 1:
        return order
    head, tail = order[:pool], order[pool:]
    s = np.asarray(scores, dtype=np.float64)[head]
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    v = np.asarray(vectors, dtype=np.float32)[head]
    picked: list[int] = []
    max_sim = np.full(len(head), -np.inf)
    available = np.ones(len(head), dtype=bool)
    for _ in range(min(k, len(head))):
        redundancy = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = np.where(available, lam * s - (1.0 - lam) * redundancy, -np.inf)
        j = int(np.argmax(value))
        picked.append(j)
        available[j] = False
        max_sim = np.maximum(max_sim, v @ v[j])
    rest = [head[j] for j in range(len(head)) if available[j]]
    return [head[j] for j in picked] + rest + tail
