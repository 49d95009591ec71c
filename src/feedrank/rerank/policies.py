"""The re-ranking stage: pure policies composed in a fixed order.

    dedupe -> blocklist -> drop seen (one pass, best ``max(8k, 80)`` eligible entries)
    -> MMR diversity -> caps per category and per creator
    (one pass) -> creator exposure floor (within the capped list) -> top k -> exploration slot

Every policy takes a ranked list of candidate positions (``list[int]`` into the slate's
aligned arrays, best first) and returns a list built only from its input: never a new
item, never a duplicate. ``rerank`` also returns each kept entry's logging propensity.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from feedrank.rerank.diversity import cap_per_key, cap_split, mmr
from feedrank.rerank.explore import exploration_slot
from feedrank.rerank.fairness import exposure_floor
from feedrank.rerank.filters import Blocklist


@dataclass(frozen=True)
class RerankPolicy:
    max_per_category: int = 3
    max_per_creator: int = 2
    drop_seen: bool = True
    mmr_lambda: float = 1.0            # 1 = no MMR; lower trades score for novelty vs picked items
    fairness_group: str = "new"        # the creator group given an exposure floor
    fairness_min_share: float = 0.0    # 0 = off
    explore_epsilon: float = 0.0       # 0 = off
    explore_position: int = 4          # 0-based slot that may be explored
    blocklist: Blocklist = field(default_factory=Blocklist)


@dataclass(frozen=True)
class Slate:
    """Aligned per-candidate arrays the policies read (length n)."""

    item_ids: Sequence[str]
    categories: Sequence[str]
    creators: Sequence[str]
    groups: Sequence[str]
    scores: np.ndarray                 # (n,) ranking scores
    vectors: np.ndarray | None = None  # (n, d) unit vectors, for MMR
    # the caller guarantees that ``item_ids`` are pairwise distinct and that the ``order`` passed
    # to ``rerank`` repeats no entry (the merged candidates' case): the re-rank then skips its
    # own O(n) check (two sets per request). False: checked.
    distinct: bool = False


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
    """``cap_per_key`` on categories (kept for readability at call sites)."""
    return cap_per_key(order, categories, max_per_category, k)


WINDOW_PER_K = 8   # eligible entries considered per feed slot (fill, exploration pool, exposure floor)
MIN_WINDOW = 80


def eligible(order: Sequence[int], slate: Slate, seen: Collection[str], policy: RerankPolicy, limit: int) -> list[int]:
    """dedupe + blocklist + drop seen in one pass, stopping after ``limit`` eligible entries:
    the policies after it only look at the best of them, so the cost is O(limit), not O(n)."""
    out: list[int] = []
    taken: set[str] = set()
    b = policy.blocklist
    blocking = bool(b)
    check_seen = policy.drop_seen and bool(seen)
    for i in order:
        iid = slate.item_ids[i]
        if iid in taken:
            continue
        if blocking and (iid in b.items or slate.creators[i] in b.creators or slate.categories[i] in b.categories):
            continue
        if check_seen and iid in seen:
            continue
        taken.add(iid)
        out.append(i)
        if len(out) >= limit:
            break
    return out


def rerank(slate: Slate, order: Sequence[int], seen: Collection[str], k: int, policy: RerankPolicy,
           u: float = 1.0, pick: int = 0) -> tuple[list[int], list[float]]:
    """Apply every policy; returns (at most ``k`` entries, propensity of each).

    ``u``/``pick`` drive the exploration slot (see ``explore.exploration_slot``)."""
    window = max(WINDOW_PER_K * k, MIN_WINDOW)
    if policy.mmr_lambda < 1.0 and slate.vectors is not None:
        while True:  # widen the window until enough entries pass the caps, or the candidates run out
            out = eligible(order, slate, seen, policy, limit=window)
            out = mmr(out, slate.scores, slate.vectors, k, policy.mmr_lambda)
            # caps on category and creator in one pass; capped-out entries fill in only when too
            # few entries satisfy the caps
            kept, skipped = cap_split(out, [(slate.categories, policy.max_per_category),
                                            (slate.creators, policy.max_per_creator)])
            if len(kept) >= 2 * k or len(out) < window:
                break
            window *= 4
    else:
        kept, skipped = _eligible_capped(order, slate, seen, policy, k, window)
    # the floor only moves entries that satisfy the caps
    kept = exposure_floor(kept, slate.groups, policy.fairness_group, policy.fairness_min_share, k)
    out = kept + skipped
    top, pool = out[:k], out[k:]
    if policy.explore_epsilon > 0 and policy.explore_position < len(top):
        # without an exploration draw (u >= epsilon) only whether the pool is empty matters
        pool = _cap_safe_pool(top, pool, policy.explore_position, slate, policy, first_only=u >= policy.explore_epsilon)
    return exploration_slot(top, pool, policy.explore_position, policy.explore_epsilon, u, pick)


def _eligible_capped(order: Sequence[int], slate: Slate, seen: Collection[str], policy: RerankPolicy, k: int,
                     window: int) -> tuple[list[int], list[int]]:
    """``eligible`` then ``cap_split`` under the widening window of ``rerank`` (without MMR),
    in one pass: the greedy caps over a prefix are the prefix of the greedy caps over a
    longer list, so stopping at the first window that holds ``2 k`` capped entries gives
    exactly what re-running both with a 4x wider window does, at O(entries looked at).

    The eligible entries are filtered first (with unique item ids and positions, the
    merged candidates' case, by two list comprehensions; otherwise by ``eligible``, which
    also dedupes), then walked window by window (the stop test only runs at window ends):
    an entry of a category already at its cap costs one set lookup, and whatever is not
    kept in the walked prefix is skipped (every eligible entry is one or the other)."""
    b = policy.blocklist
    blocking = bool(b)  # once: Blocklist.__bool__ is a Python call
    check_seen = policy.drop_seen and bool(seen)
    ids, cats, creators = slate.item_ids, slate.categories, slate.creators
    out = order if isinstance(order, list) else list(order)
    if slate.distinct or (len(set(ids)) == len(ids) and len(set(out)) == len(out)):
        if blocking:
            out = [i for i in out if not (ids[i] in b.items or creators[i] in b.creators or cats[i] in b.categories)]
        if check_seen:
            out = [i for i in out if ids[i] not in seen]
    else:
        out = eligible(out, slate, seen, policy, limit=len(out))
    max_cat, max_creator = policy.max_per_category, policy.max_per_creator
    if max_cat < 1 or max_creator < 1:  # no entry can be kept: all of them are skipped
        return [], out
    per_cat: dict[str, int] = {}
    per_creator: dict[str, int] = {}
    full: set[str] = set()
    kept: list[int] = []
    start, end = 0, len(out)
    while start < end:
        stop = min(window, end)
        for i in out[start:stop]:
            c = cats[i]
            if c in full:
                continue
            cr = creators[i]
            ncr = per_creator.get(cr, 0)
            if ncr >= max_creator:
                continue
            nc = per_cat.get(c, 0) + 1
            per_cat[c] = nc
            per_creator[cr] = ncr + 1
            kept.append(i)
            if nc >= max_cat:
                full.add(c)
        if stop == window and len(kept) >= 2 * k:
            end = stop
            break
        start, window = stop, window * 4
    mine = set(kept)
    skipped = [i for i in out[:end] if i not in mine]
    return kept, skipped


def _cap_safe_pool(top: list[int], pool: list[int], position: int, slate: Slate, policy: RerankPolicy,
                   first_only: bool = False) -> list[int]:
    """Exploration candidates that keep both caps once they replace ``top[position]``
    (``first_only``: just the first of them, or none: enough to know the pool is not empty)."""
    others = [i for j, i in enumerate(top) if j != position]
    cats: dict[str, int] = {}
    creators: dict[str, int] = {}
    for i in others:
        cats[slate.categories[i]] = cats.get(slate.categories[i], 0) + 1
        creators[slate.creators[i]] = creators.get(slate.creators[i], 0) + 1
    safe = (i for i in pool if cats.get(slate.categories[i], 0) < policy.max_per_category
            and creators.get(slate.creators[i], 0) < policy.max_per_creator)
    if first_only:
        return [i for i, _ in zip(safe, range(1))]
    return list(safe)
