"""Reference forms of the candidate sources and of the merge: brute force over the whole
catalogue (``fresh_items``, ``followed_items``, ``recent_pool``) and the per-item merge loop
(``merge_sources_reference``). They are the executable specifications that the tests compare
the serving paths with (``pipeline.live_catalog.LiveCatalog``'s time-index walks,
``retrieval.sources.merge_sources``) and the "legacy" side of ``benchmarks/serve_cpu_ab.py``.
Nothing on the request path imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from feedrank.retrieval.sources import Merged, SourceResult


def fresh_items(published_at: np.ndarray, now: float, max_age_s: float, categories: np.ndarray,
                wanted_categories: np.ndarray | None, k: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Newest items published within ``max_age_s`` of ``now`` (and not in the future),
    restricted to ``wanted_categories`` when given; newest first. ``pool``: consider only
    these item indices (e.g. a cached list of recent items)."""
    idx = np.arange(len(published_at)) if pool is None else np.asarray(pool, dtype=np.int64)
    age = now - published_at[idx]
    ok = (age >= 0) & (age <= max_age_s)
    if wanted_categories is not None and len(wanted_categories):
        ok &= np.isin(categories[idx], wanted_categories)
    sel = np.flatnonzero(ok)
    if len(sel) > k:
        sel = sel[np.argpartition(age[sel], k - 1)[:k]]
    sel = sel[np.argsort(age[sel], kind="stable")]
    return idx[sel].astype(np.int64)


def followed_items(item_keys: Sequence[np.ndarray], followed: Sequence[np.ndarray], published_at: np.ndarray,
                   now: float, max_age_s: float, k: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Items published within ``max_age_s`` of ``now`` whose key matches a followed key, for
    any of the key kinds (``item_keys[j]`` (N,) int64, e.g. creator codes and subcategory
    codes, with ``followed[j]`` the followed keys of that kind); newest first.
    ``pool``: consider only these item indices."""
    idx = np.arange(len(published_at)) if pool is None else np.asarray(pool, dtype=np.int64)
    if not any(len(f) for f in followed) or not len(idx):
        return np.zeros(0, dtype=np.int64)
    age = now - published_at[idx]
    ok = (age >= 0) & (age <= max_age_s)
    match = np.zeros(len(idx), dtype=bool)
    for keys, f in zip(item_keys, followed):
        if len(f):
            match |= np.isin(np.asarray(keys)[idx], f)
    sel = np.flatnonzero(ok & match)
    if len(sel) > k:
        sel = sel[np.argpartition(age[sel], k - 1)[:k]]
    sel = sel[np.argsort(age[sel], kind="stable")]
    return idx[sel].astype(np.int64)


def recent_pool(published_at: np.ndarray, now: float, max_age_s: float) -> np.ndarray:
    """(M,) int64 indices of the items published in ``[now - max_age_s, now]``, newest
    first: the candidate pool of fresh and followed (cache it: it changes slowly)."""
    age = now - published_at
    idx = np.flatnonzero((age >= 0) & (age <= max_age_s))
    return idx[np.argsort(age[idx], kind="stable")].astype(np.int64)


def merge_sources_reference(results: list[SourceResult], quotas: Mapping[str, int], total: int,
                            fallbacks: Sequence[str] = (), exclude: set[int] | None = None) -> Merged:
    """The straightforward per-item loop that ``merge_sources`` computes in bulk: the
    executable specification its tests compare against (and the "before" side of
    ``benchmarks/serve_cpu_ab.py``). Same arguments and result; not used when serving."""
    exclude = exclude or set()
    seen: set[int] = set()
    out: list[int] = []
    src: list[str] = []
    sc: list[float] = []
    taken: dict[str, int] = {}
    by_name = {r.name: r for r in results}

    def take(r: SourceResult, limit: int) -> None:
        n = 0
        for it, s in zip(r.items.tolist(), r.scores.tolist()):
            if n >= limit or len(out) >= total:
                break
            if it in seen or it in exclude:
                continue
            seen.add(it)
            out.append(it)
            src.append(r.name)
            sc.append(s)
            n += 1
        taken[r.name] = taken.get(r.name, 0) + n

    for r in results:
        take(r, quotas.get(r.name, total))
    for name in fallbacks:
        if len(out) >= total:
            break
        if name in by_name:
            take(by_name[name], total)
    return Merged(np.asarray(out, dtype=np.int64), src, np.asarray(sc, dtype=np.float32), taken)
