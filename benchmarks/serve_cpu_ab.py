"""CPU per feed request in process, the current pipeline against re-enactments of older code
paths, interleaved in one process (A/B on the same model, users and machine state). Prints
CPU ms per request and the CPU of the main pieces.

    .venv/bin/python benchmarks/serve_cpu_ab.py var/bench/serve/u1000000-i1000000-d5/model --requests 1000
    .venv/bin/python benchmarks/serve_cpu_ab.py var/bench/serve/u1000000-i1000000-d5/model --modes current \
        --index /tmp/ivf.faiss          # "current" searches this index (e.g. the bundle re-indexed)
    .venv/bin/python benchmarks/serve_cpu_ab.py var/bench/serve/u1000000-i1000000-d5/model --ann-only
    .venv/bin/python benchmarks/serve_cpu_ab.py var/bench/serve/u20000-i5000-d14/model --requests 300 --rounds 1 --observe

Modes (``--modes``, each run ``--rounds`` times, interleaved). Only "current" runs on today's
code: "legacy" and "before" patch internals that later rounds changed, so they run from the
commit ``REENACTED_AT`` (the command says how); to compare two code trees, use
``benchmarks/request_cpu_ab.py``.

"before" is the pipeline at the start of issue #5 round 3 (2026-11-22 15:00 UTC): the bundle's
own index; the prior's pool (600 ANN hits + the 5,000 newest) gathered and sorted again on
every request (``Uncached``) instead of kept in a ``retrieval.served.RescorePool``; the
re-rank on category / creator / group names gathered from lists (``before_rerank``) instead
of integer codes; ``followed_keys`` by ``np.unique`` at every history length; the ranker's
features stacked and ``np.nan_to_num``-ed (``stacked_features``). "legacy" includes these.

"legacy" puts back, on the same loaded Recommender: fresh/followed/the prior's pool filtered
from a cached recent pool of the whole catalogue (``sources_reference.fresh_items``,
``followed_items``, ``recent_pool``), the O(N) liveness checks per request, the uncached
feature-store read of every candidate (``LiveFeatures.read_items``), the per-item merge
loop, the two-pass re-rank (eligible + caps re-run on a 4x wider window) and FAISS with
its default OpenMP threads (the number of cores).
"""

from __future__ import annotations

import argparse
import functools
import time
import zlib
from dataclasses import replace

from pathlib import Path

import faiss
import numpy as np

import feedrank.pipeline.candidates as cands
import feedrank.pipeline.recommender as recmod
import feedrank.ranking.features as features
from feedrank.rerank import policies
from feedrank.rerank.diversity import cap_split
from feedrank.retrieval import sources
from feedrank.retrieval.index import FaissIndex, IndexParams, choose_kind
from feedrank.retrieval.prior import rescore_with_prior
from feedrank.retrieval.served import PRIOR_POOL_MAX, popular_pool_size
from feedrank.retrieval.sources import SourceResult, followed_keys, sorted_unique
from feedrank.retrieval.sources_reference import followed_items, fresh_items, merge_sources_reference, recent_pool
from feedrank.serving.factory import build_service
from feedrank.types import FeedRequest

CACHE_S = cands.CACHE_S
REENACTED_AT = "fb4d46c"  # the last commit whose internals the "legacy" and "before" modes patch correctly
MERGE = cands.merge_sources


def legacy_rerank(slate, order, seen, k, policy, u=1.0, pick=0):
    """``policies.rerank`` before the one-pass form (no MMR, as the default policy)."""
    window = max(policies.WINDOW_PER_K * k, policies.MIN_WINDOW)
    while True:
        out = policies.eligible(order, slate, seen, policy, limit=window)
        kept, skipped = cap_split(out, [(slate.categories, policy.max_per_category), (slate.creators, policy.max_per_creator)])
        if len(kept) >= 2 * k or len(out) < window:
            break
        window *= 4
    kept = policies.exposure_floor(kept, slate.groups, policy.fairness_group, policy.fairness_min_share, k)
    out = kept + skipped
    top, pool = out[:k], out[k:]
    if policy.explore_epsilon > 0 and policy.explore_position < len(top):
        pool = policies._cap_safe_pool(top, pool, policy.explore_position, slate, policy)
    return policies.exploration_slot(top, pool, policy.explore_position, policy.explore_epsilon, u, pick)


legacy_merge = merge_sources_reference  # merge_sources before it was vectorised: a per-item loop


class _GatherPool:
    """The prior's rescoring as it was before ``RescorePool``: per request, the sorted union
    of ANN hits and pool, its vectors gathered, ``rescore_with_prior``."""

    def __init__(self, parts: tuple) -> None:
        self.parts = parts

    def top(self, prior, user_vec, ann, item_vecs, published_at, now, k, clicks=None):
        cand = sorted_unique(ann[ann >= 0], *self.parts)
        return rescore_with_prior(prior, user_vec, cand, item_vecs[cand], published_at[cand], now, k,
                                  clicks=None if clicks is None else clicks[cand])


def stacked_features(tower_sim, category_affinity, item_impressions, item_clicks, age_s, user_clicks, ts, prior_ctr,
                     prior_weight, engagement=None, dwell_prior=0.0):
    """``ranking.features.ranking_features`` at the start of round 3: columns stacked, then
    concatenated, cast and ``np.nan_to_num``-ed (the same values, tests/unit/ranking/test_features_block.py)."""
    from feedrank.ranking.features import Engagement, engagement_features, smoothed_ctr

    ts = np.asarray(ts, dtype=np.float64)
    hours = np.remainder(ts / 3600.0, 24.0)
    days = np.remainder(ts / 86400.0 + 3.0, 7.0)
    n = len(tower_sim)
    cols = [np.asarray(tower_sim, dtype=np.float64), np.asarray(category_affinity, dtype=np.float64),
            np.log1p(np.maximum(item_impressions, 0)), np.log1p(np.maximum(item_clicks, 0)),
            smoothed_ctr(np.asarray(item_clicks, np.float64), np.asarray(item_impressions, np.float64), prior_ctr,
                         prior_weight),
            np.log1p(np.maximum(age_s, 0) / 3600.0), np.log1p(np.maximum(user_clicks, 0)),
            np.broadcast_to(np.sin(2 * np.pi * hours / 24), (n,)), np.broadcast_to(np.cos(2 * np.pi * hours / 24), (n,)),
            np.broadcast_to(np.sin(2 * np.pi * days / 7), (n,)), np.broadcast_to(np.cos(2 * np.pi * days / 7), (n,))]
    base = np.stack(cols, axis=1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        eng = engagement_features(engagement if engagement is not None else Engagement.zeros(n),
                                  np.asarray(age_s, dtype=np.float64), prior_ctr, prior_weight, dwell_prior)
    x = np.concatenate([base, eng], axis=1).astype(np.float32)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def before_rerank(self, cand, cand_ids, scores, order, ctx, k, request_id, explore=True):
    """``Recommender._rerank`` at the start of round 3: names gathered from lists."""
    idx = cand.tolist()
    slate = policies.Slate(item_ids=cand_ids, categories=recmod._gather(self._categories_list, idx),
                           creators=recmod._gather(self._creators_list, idx), groups=recmod._gather(self._groups_list, idx),
                           scores=np.asarray(scores, dtype=np.float64),
                           vectors=self.art.item_vectors[cand] if self.policy.mmr_lambda < 1.0 else None)
    policy = self.policy
    blocklist = self.blocklists.current()
    if blocklist or not explore:
        policy = replace(policy, blocklist=blocklist, explore_epsilon=policy.explore_epsilon if explore else 0.0)
    rng = np.random.default_rng(zlib.crc32(request_id.encode()))
    return recmod.rerank(slate, order, ctx.seen, k, policy, u=float(rng.random()), pick=int(rng.integers(1 << 30)))


class Uncached:
    """``Recommender._prior_pool`` before the pool was kept between requests."""

    def __init__(self, rec) -> None:
        self.rec = rec

    def prior_pool(self, prior, now):
        r, p = self.rec, self.rec.cfg.pipeline
        hours = max(p.fresh_hours, p.followed_hours)
        parts = (r._newest(None, None, now, hours * 3600.0, PRIOR_POOL_MAX),)
        popular_n = popular_pool_size(prior, p.ann_k)  # as pipeline/candidates.py (any popularity weight)
        if popular_n:
            parts += (r._only_live(r._popular_list(now)[:popular_n], now),)
        return _GatherPool(parts)


class Legacy:
    """The old per-request code paths, bound to one Recommender."""

    def __init__(self, rec) -> None:
        self.rec = rec
        self.dead = rec.live_catalog.dead
        self.expires = rec.live_catalog.expires_at

    def live_mask(self, idx, now):
        r = self.rec
        ok = (self.expires[idx] > now) & ~self.dead[idx]
        if r.max_item_age_s is not None:
            age = now - r.catalog.published_at[idx]
            ok &= (age >= 0) & (age <= r.max_item_age_s)
        return ok

    def live_items(self, now):
        r = self.rec
        if r.max_item_age_s is None and not self.dead.any() and not np.isfinite(self.expires).any():
            return None
        return r.live_catalog.live_rows(now)

    def recent_pool_(self, now):
        r, p = self.rec, self.rec.cfg.pipeline
        hours = max(p.fresh_hours, p.followed_hours)
        hit = r._source_cache.get("legacy-pool")
        if hit is not None and abs(now - hit[0]) <= CACHE_S:
            return hit[1]
        pool = recent_pool(r.catalog.published_at, now, hours * 3600.0 + CACHE_S)
        pool = pool[self.live_mask(pool, now)]
        r._source_cache["legacy-pool"] = (now, pool)
        return pool

    def source_fetchers(self, ctx, now, aff, live):
        r, p = self.rec, self.rec.cfg.pipeline
        out = {}
        has_history = bool(ctx.history.max() >= 0) if len(ctx.history) else False
        zeros = lambda n: np.zeros(n, dtype=np.float32)  # noqa: E731
        if p.fresh_k:
            def fresh():
                wanted = None
                if has_history:
                    top = np.argsort(-aff)[:3]
                    wanted = top[top > 0].astype(r.catalog.cat_idx.dtype)
                got = fresh_items(r.catalog.published_at, now, p.fresh_hours * 3600.0, r.catalog.cat_idx, wanted,
                                  p.fresh_k, pool=self.recent_pool_(now))
                return SourceResult("fresh", got, zeros(len(got)))
            out["fresh"] = fresh
        if p.followed_k and has_history:
            def followed():
                h = ctx.history[ctx.history >= 0]
                keys = (r.catalog.creator_hash, r.catalog.sub_idx)
                follows = [followed_keys(k[h], p.follow_min_clicks, ignore=ig) for k, ig in zip(keys, r._follow_ignore())]
                got = followed_items(keys, follows, r.catalog.published_at, now, p.followed_hours * 3600.0, p.followed_k,
                                     pool=self.recent_pool_(now))
                return SourceResult("followed", got, zeros(len(got)))
            out["followed"] = followed
        if p.trending_k and r.art.engagement is not None:
            def trending():
                got = r._trending_list(now, live)
                return SourceResult("trending", got, zeros(len(got)))
            out["trending"] = trending
        return out

    def enrich(self, cand, ctx, now, user_vec, aff, user_id="", live_status=None):
        r = self.rec
        from feedrank.ranking.features import ranking_features

        n = len(cand)
        eng = None if r.art.engagement is None else r.art.engagement.engagement(user_id, cand, now)
        sim = r.art.item_vectors[cand] @ user_vec
        imps, clicks = r.state.item_impressions[cand], r.state.item_clicks[cand]
        if r.live is not None:
            li = r.live.read_items([r._item_ids_list[i] for i in cand.tolist()], now, imps, clicks)
            imps, clicks = np.maximum(imps, li.impressions), np.maximum(clicks, li.clicks)
            if live_status is not None:
                live_status.append(li.status)
        return ranking_features(tower_sim=sim, category_affinity=aff[r.catalog.cat_idx[cand]], item_impressions=imps,
                                item_clicks=clicks, age_s=r.catalog.age_seconds(cand, now),
                                user_clicks=np.full(n, ctx.n_clicks, dtype=np.float64), ts=np.full(n, now),
                                prior_ctr=r.prior_ctr, prior_weight=r.cfg.ranking.ctr_prior, engagement=eng,
                                dwell_prior=r.dwell_prior)[:, : getattr(r.art.ranker, "n_features", None)]


def set_mode(rec, mode: str, legacy: Legacy, saved: dict, indexes: dict) -> None:
    """Put a mode's code paths (and index) on the instance (module docstring)."""
    switch(rec, legacy, mode == "legacy", saved)
    rec.__dict__.pop("_prior_pool", None)
    sources.SMALL_HISTORY = saved["small_history"]
    recmod.ranking_features = features.ranking_features = saved["features"]
    if mode in ("legacy", "before"):
        rec._prior_pool = Uncached(rec).prior_pool
        sources.SMALL_HISTORY = 0
        recmod.ranking_features = features.ranking_features = stacked_features
    if mode == "before":
        rec._rerank_before = functools.partial(before_rerank, rec)
    rec.art.index = indexes["current" if mode == "current" else "bundle"]


def switch(rec, legacy: Legacy, on: bool, saved: dict) -> None:
    """Put the legacy paths on the instance (on) or take them off."""
    names = ("_source_fetchers", "_live_items", "_enrich")
    if on:
        rec._source_fetchers, rec._live_items, rec._enrich = legacy.source_fetchers, legacy.live_items, legacy.enrich
        rec.live_catalog.newest_saved = rec.live_catalog.newest
        # the prior's pool: the cached recent pool, newest first
        rec.live_catalog.newest = lambda index, keys, now, age, k: legacy.recent_pool_(now)[:k] if index is None else \
            rec.live_catalog.newest_saved(index, keys, now, age, k)
        recmod.rerank = legacy_rerank
        cands.merge_sources = legacy_merge
        faiss.omp_set_num_threads(saved["omp"])
    else:
        for n in names:
            rec.__dict__.pop(n, None)
        if hasattr(rec.live_catalog, "newest_saved"):
            rec.live_catalog.newest = rec.live_catalog.newest_saved
        recmod.rerank = policies.rerank
        cands.merge_sources = MERGE
        faiss.omp_set_num_threads(rec.cfg.serving.torch_threads)


def ann_cost(model: str, queries: int = 300) -> None:
    """CPU ms per single-query HNSW search of the bundle's index, by k and OpenMP threads
    (queries: item vectors plus noise, renormalised; efSearch = k as the pipeline asks)."""
    index = faiss.read_index(str(Path(model) / "index.faiss"))
    vecs = np.load(Path(model) / "item_vectors.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    q = np.ascontiguousarray(vecs[rng.integers(0, len(vecs), queries)], dtype=np.float32)
    q += rng.normal(0, 0.1, q.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for threads in sorted({faiss.omp_get_max_threads(), 1}, reverse=True):
        faiss.omp_set_num_threads(threads)
        for k in (600, 300, 128):
            params = faiss.SearchParametersHNSW(efSearch=k)
            c0 = time.process_time()
            for i in range(queries):
                index.search(q[i:i + 1], k, params=params)
            print(f"threads {threads} k=ef={k}: {1000.0 * (time.process_time() - c0) / queries:.3f} ms CPU per search")


def observe_cost(rec, users: list[str], rounds: int = 3) -> None:
    """CPU ms of ``Recommender.observe`` per served feed: its k impressions (one user, one
    time), the events ``serving/app.py`` builds and folds in on the request path."""
    from feedrank.types import Event, EventKind

    served = []
    for u in users:
        resp = rec.recommend(FeedRequest(user_id=u, k=20, deadline_ms=10_000.0))
        served.append((u, resp, float(rec.clock())))
    feeds = []
    c0 = time.process_time()
    for j, (u, resp, now) in enumerate(served):
        feeds.append([Event(event_id=f"ab{j}:{it.rank}", ts=now, user_id=u, item_id=it.item_id,
                            kind=EventKind.IMPRESSION, position=it.rank - 1, request_id=f"ab{j}",
                            propensity=it.propensity) for it in resp.items])
    print(f"events   cpu ms/feed {1000.0 * (time.process_time() - c0) / max(len(feeds), 1):.3f} (building them)",
          flush=True)
    c0 = time.process_time()
    for events in feeds:
        rec.observe(events)
    print(f"observe  cpu ms/feed {1000.0 * (time.process_time() - c0) / max(len(feeds), 1):.3f} "
          f"({sum(map(len, feeds))} impressions in {len(feeds)} feeds)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ann-only", action="store_true", help="only time the HNSW search by k and threads")
    ap.add_argument("--modes", default="current", help="comma-separated: legacy, before, current")
    ap.add_argument("--index", default="", help="an index file of the bundle's item vectors for the current mode")
    ap.add_argument("--index-kind", default="", help="its kind (default: what index: auto picks for the catalogue)")
    ap.add_argument("--profile", action="store_true", help="then cProfile (CPU time) 300 current requests")
    ap.add_argument("--observe", action="store_true",
                    help="then CPU per feed of Recommender.observe on its impressions (as GET /v1/feed logs them)")
    args = ap.parse_args()
    if args.ann_only:
        ann_cost(args.model)
        return
    saved = {"omp": faiss.omp_get_max_threads(), "small_history": sources.SMALL_HISTORY,
             "features": features.ranking_features}
    app, event_log, rec, cfg = build_service(args.model, "/tmp/feedrank-ab-events")
    legacy = Legacy(rec)
    acc: dict[str, float] = {}

    def timed(obj, name, label):
        f = getattr(obj, name)

        @functools.wraps(f)
        def g(*a, **k):
            c = time.process_time()
            try:
                return f(*a, **k)
            finally:
                acc[label] = acc.get(label, 0.0) + time.process_time() - c
        setattr(obj, name, g)

    indexes = {"bundle": rec.art.index, "current": rec.art.index}
    if args.index:
        kind = args.index_kind or choose_kind(len(rec.catalog), "auto", IndexParams.from_config(cfg.retrieval))
        indexes["current"] = FaissIndex.load(Path(args.index), kind, IndexParams.from_config(cfg.retrieval))
        if len(indexes["current"]) != len(rec.catalog):
            raise SystemExit(f"{args.index} holds {len(indexes['current'])} vectors, the catalogue {len(rec.catalog)}")
    for index in {id(i): i for i in indexes.values()}.values():
        timed(index, "search", "ann")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    stale = [m for m in modes if m in ("legacy", "before")]
    if stale:  # they patch internals that later rounds changed (the category term, rows in the re-rank)
        raise SystemExit(f"--modes {','.join(stale)}: these re-enactments patch the internals of the code of "
                         f"commit {REENACTED_AT} and no longer fit the current ones; run them from that commit "
                         f"(git worktree add /tmp/at {REENACTED_AT}; PYTHONPATH=/tmp/at/src python /tmp/at/benchmarks/"
                         f"serve_cpu_ab.py ...), or compare code trees with benchmarks/request_cpu_ab.py")
    bad = [m for m in modes if m not in ("legacy", "before", "current")]
    if bad:
        raise SystemExit(f"unknown --modes {bad}: legacy, before, current")
    rng = np.random.default_rng(0)
    known = rec.art.snapshot.user_ids
    users = [str(known[i]) if rng.random() < 0.9 else f"new-{i}" for i in rng.integers(0, len(known), args.requests)]
    for mode in modes * args.rounds:
        set_mode(rec, mode, legacy, saved, indexes)
        if "_rerank_before" in rec.__dict__:  # the "before" mode's re-rank, wrapped below like the others
            rec._rerank = rec.__dict__.pop("_rerank_before")
        for name in ("_retrieve", "_enrich", "_rerank", "_score"):  # wraps the legacy or the current method
            timed(rec, name, name.strip("_"))
        acc.clear()
        for u in users[:20]:
            rec.recommend(FeedRequest(user_id=u, k=20, deadline_ms=10_000.0))
        acc.clear()
        c0 = time.process_time()
        for u in users:
            rec.recommend(FeedRequest(user_id=u, k=20, deadline_ms=10_000.0))
        cpu = 1000.0 * (time.process_time() - c0) / len(users)
        parts = {k: round(1000.0 * v / len(users), 3) for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}
        print(f"{mode:8s} cpu ms/request {cpu:.3f} {parts}", flush=True)
        for name in ("_retrieve", "_enrich", "_rerank", "_score"):  # the wrappers (and a legacy _enrich)
            rec.__dict__.pop(name, None)
    if args.observe:
        observe_cost(rec, users[:300], args.rounds)
    if args.profile:
        import cProfile
        import pstats

        set_mode(rec, "current", legacy, saved, indexes)
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        for u in users[:300]:
            rec.recommend(FeedRequest(user_id=u, k=20, deadline_ms=10_000.0))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    event_log.close()


if __name__ == "__main__":
    main()
