"""Pure re-ranking policies. Each takes a ranked list and returns a sub-list (never new
items, never duplicates), preserving the relative order of what it keeps.

A ranked list is ``list[int]`` of candidate positions into aligned arrays (items,
categories, ...), best first.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RerankPolicy:
    max_per_category: int = 3
    drop_seen: bool = True


def drop_seen(order: Sequence[int], item_ids: Sequence[str], seen: Collection[str]) -> list[int]:
    """Remove entries whose item the user has already been shown."""
    if not seen:
        return list(order)
    return [i for i in order if item_ids[i] not in seen]


def dedupe(order: Sequence[int], item_ids: Sequence[str]) -> list[int]:
    """Keep the first occurrence of each item."""
    out, seen = [], set()
    for i in order:
        if item_ids[i] not in seen:
            seen.add(item_ids[i])
            out.append(i)
    return out


def cap_per_category(order: Sequence[int], categories: Sequence[str], max_per_category: int, k: int) -> list[int]:
    """Greedy: take items in order while their category has fewer than the cap; if fewer
    than ``k`` result, top up with the best skipped items (so a narrow catalogue still
    fills the feed). Returns at most ``k`` entries."""
    counts: dict[str, int] = {}
    kept: list[int] = []
    skipped: list[int] = []
    for i in order:
        c = categories[i]
        if counts.get(c, 0) < max_per_category:
            counts[c] = counts.get(c, 0) + 1
            kept.append(i)
            if len(kept) >= k:
                return kept
        else:
            skipped.append(i)
    return kept + skipped[: k - len(kept)]


def apply_policy(order: Sequence[int], item_ids: Sequence[str], categories: Sequence[str],
                 seen: Collection[str], k: int, policy: RerankPolicy) -> list[int]:
    """dedupe -> drop seen -> per-category cap, truncated to ``k``."""
    out = dedupe(order, item_ids)
    if policy.drop_seen:
        out = drop_seen(out, item_ids, seen)
    return cap_per_category(out, categories, policy.max_per_category, k)
