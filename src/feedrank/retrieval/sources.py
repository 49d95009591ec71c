"""Candidate sources besides ANN, the runner that enforces their time budgets, and the merger.

Sources return catalogue indices in their own order of preference (all pure functions of
arrays: no clock, no I/O):

    popular_items    clicks discounted by item age (3-day half-life): the fallback
    trending_items   most engaged recently: exponentially decayed click counters (6 h)
    followed_keys    the creators and topics (subcategories) a user follows, derived from
                     history (a key clicked at least ``min_clicks`` times among the recent
                     clicks) since none of the data sets has an explicit follow list

Fresh and followed items are served by walking ``pipeline.live_catalog.LiveCatalog``'s time
indexes; their brute-force forms (O(catalogue)) and the per-item merge live in
``retrieval.sources_reference``: the specifications the tests compare against, never used
when serving.

``gather_sources`` runs source callables under per-source time budgets: a source that
raises or runs past its budget is dropped (status ``error``/``late``), so its quota is
filled from the fallbacks. ``merge_sources`` takes the sources in priority order, each up
to its quota, dedupes (the first source that proposed an item keeps it), then fills up
to ``total`` from the fallback sources in order.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceResult:
    name: str
    items: np.ndarray      # (n,) int64 catalogue indices, best first
    scores: np.ndarray     # (n,) float32, source-specific


@dataclass(frozen=True)
class Merged:
    """What the merger returns: candidates with the source that proposed each."""

    items: np.ndarray                  # (n,) int64 catalogue indices
    sources: list[str]                 # (n,) name of the source each came from
    scores: np.ndarray                 # (n,) float32 retrieval score (source-specific)
    taken: dict[str, int] = field(default_factory=dict)  # name -> candidates it contributed


def _top(score: np.ndarray, k: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` largest finite positive-or-zero ``score`` values, best first
    (``pool``: restrict to these indices). Ties keep index order."""
    idx = np.arange(len(score)) if pool is None else np.asarray(pool, dtype=np.int64)
    s = score[idx]
    ok = np.isfinite(s)
    idx, s = idx[ok], s[ok]
    k = min(k, len(idx))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < len(idx):
        part = np.argpartition(-s, k - 1)[:k]
        idx, s = idx[part], s[part]
    order = np.lexsort((idx, -s))
    return idx[order].astype(np.int64)


def popular_items(click_counts: np.ndarray, age_s: np.ndarray, k: int, half_life_s: float = 3 * 86400.0) -> np.ndarray:
    """Top-``k`` item indices by clicks discounted by age (recent popularity)."""
    score = np.log1p(click_counts.astype(np.float64)) * np.exp2(-np.maximum(age_s, 0.0) / half_life_s)
    score = score + 1e-9 * click_counts  # tie-break by raw clicks
    k = min(k, len(score))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-score, k - 1)[:k]
    return top[np.argsort(-score[top], kind="stable")].astype(np.int64)


def decayed_counts(values: np.ndarray, updated_at: np.ndarray, now: float, tau_s: float) -> np.ndarray:
    """Exponentially decayed counters read at ``now``: (N,) ``values`` last updated at
    (N,) ``updated_at`` -> (N,) ``values * exp(-(now - updated_at) / tau_s)`` (an update
    in the future of ``now`` is not decayed)."""
    dt = np.maximum(now - np.asarray(updated_at, dtype=np.float64), 0.0)
    return np.asarray(values, dtype=np.float64) * np.exp(-dt / tau_s)


def trending_items(recent_clicks: np.ndarray, k: int, min_clicks: float = 1.0,
                   eligible: np.ndarray | None = None) -> np.ndarray:
    """Most engaged recently: top-``k`` by (N,) ``recent_clicks`` (decayed click counts),
    only items with at least ``min_clicks`` of them; ``eligible`` (M,) int64 restricts to
    those items (live ones). Best first."""
    score = np.asarray(recent_clicks, dtype=np.float64)
    score = np.where(score >= min_clicks, score, -np.inf)
    return _top(score, k, eligible)


SMALL_HISTORY = 256  # followed_keys: up to this many keys, a dict count instead of np.unique


def followed_keys(history_keys: np.ndarray, min_clicks: int, ignore: Sequence[int] = ()) -> np.ndarray:
    """Keys (creator or topic codes) the user follows: those that appear at least
    ``min_clicks`` times in (L,) ``history_keys`` (the keys of the recent clicks; negative
    = padding). ``ignore``: keys that never count (e.g. the code of "unknown").
    Most-clicked first, ties by most recent click."""
    h = np.asarray(history_keys, dtype=np.int64)
    h = h[h >= 0]
    if min_clicks < 1 or not len(h):
        return np.zeros(0, dtype=np.int64)
    if len(h) <= SMALL_HISTORY:  # a request's history (30 clicks): dicts beat np.unique's fixed costs
        counts: dict[int, int] = {}
        for key in h[::-1].tolist():  # most recent first: dict order = order of the most recent click
            counts[key] = counts.get(key, 0) + 1
        skip = set(np.asarray(ignore, dtype=np.int64).tolist())
        out = [key for key, n in counts.items() if n >= min_clicks and key not in skip]
        out.sort(key=counts.__getitem__, reverse=True)  # stable: ties keep the most recent click first
        return np.array(out, dtype=np.int64)
    keys, first_rev, counts = np.unique(h[::-1], return_index=True, return_counts=True)
    ok = (counts >= min_clicks) & ~np.isin(keys, np.asarray(ignore, dtype=np.int64))
    keys, first_rev, counts = keys[ok], first_rev[ok], counts[ok]
    return keys[np.lexsort((first_rev, -counts))].astype(np.int64)


def gather_sources(fetchers: Mapping[str, Callable[[], SourceResult]], budgets_ms: Mapping[str, float],
                   executor: cf.Executor | None = None,
                   clock: Callable[[], float] = time.perf_counter) -> tuple[list[SourceResult], dict[str, str]]:
    """Run the source callables; keep the results of those that finish within their budget.

    ``budgets_ms[name]`` (missing or <= 0: no limit). Without an ``executor`` the sources
    run one after another and a source that took longer than its budget is dropped. With
    one, they all start at once and each is waited for until its budget (measured from the
    start) runs out: a late source is abandoned, never waited for. A source that raises is
    dropped and logged. Returns (results in ``fetchers`` order, status per name:
    ``ok``, ``late`` or ``error``)."""
    status: dict[str, str] = {}
    results: dict[str, SourceResult] = {}

    def limit(name: str) -> float:
        b = float(budgets_ms.get(name, 0.0) or 0.0)
        return b / 1000.0 if b > 0 else float("inf")

    if executor is None:
        for name, fetch in fetchers.items():
            t0 = clock()
            try:
                r = fetch()
            except Exception:
                log.exception("candidate source %s failed; its quota is filled from the fallbacks", name)
                status[name] = "error"
                continue
            if clock() - t0 > limit(name):
                status[name] = "late"
                continue
            results[name], status[name] = r, "ok"
    else:
        t0 = clock()
        futures = {name: executor.submit(fetch) for name, fetch in fetchers.items()}
        for name, fut in futures.items():
            wait = limit(name) - (clock() - t0)
            try:
                results[name] = fut.result(timeout=None if wait == float("inf") else max(wait, 0.0))
                status[name] = "ok"
            except cf.TimeoutError:
                fut.cancel()
                status[name] = "late"
            except Exception:
                log.exception("candidate source %s failed; its quota is filled from the fallbacks", name)
                status[name] = "error"
    return [results[n] for n in fetchers if n in results], status


def sorted_unique(*arrays: np.ndarray) -> np.ndarray:
    """``np.unique(np.concatenate(arrays))`` (so also ``np.union1d`` of two) by one sort and a
    neighbour compare: numpy 2's hash-based ``unique`` costs several times more at the
    sizes of a request (hundreds to a few thousand ids)."""
    c = np.concatenate([np.asarray(a).ravel() for a in arrays]) if len(arrays) != 1 else np.array(arrays[0]).ravel()
    if len(c) < 2:
        return c
    c.sort()
    keep = np.empty(len(c), dtype=bool)
    keep[0] = True
    np.not_equal(c[1:], c[:-1], out=keep[1:])
    return c[keep]


class _Marks(threading.local):
    """Per-thread scratch of ``merge_sources``: one int32 stamp per item row (4 bytes per
    catalogue row and serving thread; up to twice that after the catalogue grew, as the array
    doubles when it must grow); a row is "used" in the current merge when its stamp
    equals the merge's token, so nothing is cleared between merges."""

    stamps: np.ndarray = np.zeros(0, dtype=np.int32)
    token: int = 0

    def next(self, n: int) -> tuple[np.ndarray, int]:
        """(stamps covering rows 0..n-1, a token no stamp holds yet)."""
        if len(self.stamps) < n:
            self.stamps, self.token = np.zeros(max(n, 2 * len(self.stamps)), dtype=np.int32), 0
        self.token += 1
        if self.token >= np.iinfo(np.int32).max:  # after ~2e9 merges: start over
            self.stamps[:] = 0
            self.token = 1
        return self.stamps, self.token


_MARKS = _Marks()
MARKS_MAX_ROWS = 1 << 28  # larger row numbers (or negative ones) merge through sorted arrays instead


def merge_sources(results: list[SourceResult], quotas: Mapping[str, int], total: int,
                  fallbacks: Sequence[str] = (), exclude: set[int] | None = None) -> Merged:
    """Merge sources under quotas; dedupe (first source wins); fill from ``fallbacks``.

    Each result in order contributes up to ``quotas[name]`` new items (missing = ``total``);
    then, while fewer than ``total``, the fallback sources in order contribute the items
    they have left (beyond their quota). A source that is short, late or failed (absent
    from ``results``) thus has its share filled from the fallbacks. Items in ``exclude``
    never appear; no item appears twice. Vectorised per source (no per-item Python).

    The items taken so far are stamped in a per-thread array indexed by row (``_Marks``):
    a membership test is one gather, with no sorted "used" array rebuilt per source (the
    request path's case). Rows outside ``0..MARKS_MAX_ROWS`` (negative or huge) are first
    renumbered densely (``np.unique``'s inverse) and mapped back: the same merge (tested
    against the per-item reference)."""
    arrays = [np.asarray(r.items, dtype=np.int64) for r in results]
    ex = np.fromiter(exclude, dtype=np.int64, count=len(exclude)) if exclude else np.zeros(0, dtype=np.int64)
    every = np.concatenate(arrays + [ex]) if arrays else ex
    hi, decode = -1, None
    if len(every):
        hi = int(every.max())
        if int(every.min()) < 0 or hi >= MARKS_MAX_ROWS:
            decode, codes = np.unique(every, return_inverse=True)
            *arrays, ex = np.split(codes.astype(np.int64), np.cumsum([len(a) for a in arrays]))
            hi = len(decode) - 1
    stamps, token = _MARKS.next(hi + 1)
    if len(ex):
        stamps[ex] = token
    parts: list[tuple[np.ndarray, str, np.ndarray]] = []
    taken: dict[str, int] = {}
    by_name = {r.name: (r, a) for r, a in zip(results, arrays)}
    count = 0

    def take(r: SourceResult, items: np.ndarray, limit: int) -> None:
        nonlocal count
        n = 0
        room = min(limit, total - count)
        if room > 0 and len(items):
            sel = (stamps[items] != token).nonzero()[0][:room]
            got = items[sel]
            if len(got) > 1:  # an item twice within the source: keep its first occurrence only
                srt = got.copy()
                srt.sort()
                if not np.not_equal(srt[1:], srt[:-1]).all():
                    ok = np.zeros(len(items), dtype=bool)
                    ok[np.unique(items, return_index=True)[1]] = True
                    ok &= stamps[items] != token
                    sel = np.flatnonzero(ok)[:room]
                    got = items[sel]
            n = len(got)
            if n:
                parts.append((got, r.name, np.asarray(r.scores, dtype=np.float32)[sel]))
                stamps[got] = token
                count += n
        taken[r.name] = taken.get(r.name, 0) + n

    for r, a in zip(results, arrays):
        take(r, a, quotas.get(r.name, total))
    for name in fallbacks:
        if count >= total:
            break
        if name in by_name:
            take(*by_name[name], total)
    if decode is not None:
        parts = [(decode[got], name, scores) for got, name, scores in parts]
    return _merged(parts, taken)


def _merged(parts: list[tuple[np.ndarray, str, np.ndarray]], taken: dict[str, int]) -> Merged:
    if not parts:
        return Merged(np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.float32), taken)
    sources: list[str] = []
    for got, name, _ in parts:
        sources.extend([name] * len(got))
    return Merged(np.concatenate([p[0] for p in parts]), sources, np.concatenate([p[2] for p in parts]), taken)
