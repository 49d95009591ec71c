"""The Recommender: context -> retrieve -> enrich -> rank -> rerank, under a deadline.

Tiers (the response says which one answered):
    full       two-tower + sources, ranked by the full ranker, re-ranked
    reduced    a smaller ranker variant and/or fewer candidates (the ladder, the ranking
               budget), or the ranker skipped (deadline nearly spent, or no ranker in the
               bundle: candidates keep their retrieval order), then re-ranked
    fallback   retrieval failed or the ladder is shedding load: the cached popular list,
               re-ranked

The ladder (``pipeline.slo_ms`` > 0) is a ``degrade.TierController`` fed every request's
total latency; it caps the tier at reduced or fallback while p99 is over the SLO.

The retrieve stage is ``pipeline.candidates.CandidateStage`` (a mixin); which rows are
live and the newest of them per category/creator/subcategory is
``pipeline.live_catalog.LiveCatalog``, kept up to date by ``add_items``.
"""

from __future__ import annotations

import copy
import logging
import operator
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from feedrank.config import FeedrankConfig, config_from_dict, config_to_dict
from feedrank.features.online import OnlineState, UserContext
from feedrank.pipeline.artifacts import ModelArtifacts
from feedrank.pipeline.batching import MicroBatcher
from feedrank.pipeline.candidates import CACHE_S, PRIOR_POOL_MAX, CandidateStage  # noqa: F401 (re-exported)
from feedrank.pipeline.degrade import TierController
from feedrank.pipeline.live_catalog import LiveCatalog
from feedrank.pipeline.policy_source import BlocklistSource
from feedrank.pipeline.rank_stage import RankStage
from feedrank.ranking.runtime import RankerRuntime, limit_blas_threads
from feedrank.rerank.policies import RerankPolicy, Slate, rerank
from feedrank.retrieval.fast_user import numpy_user_tower
from feedrank.types import Event, EventKind, FeedRequest, FeedResponse, Item, ScoredItem

log = logging.getLogger(__name__)

STAGES = ("context", "retrieve", "enrich", "rank", "rerank")
# what a settings view (``Recommender.with_settings``) keeps its own when the base's catalogue
# state is copied onto it (``_sync_views``): its settings and the caches made with them
VIEW_OWN = frozenset({"cfg", "policy", "_popular_lock", "_popular", "_popular_at", "_live", "_live_at", "_source_pool"})


class _Shed(Exception):
    """The ladder is at ``fallback``: skip the models for this request."""


def _limit_faiss_threads(n: int) -> None:
    """FAISS's OpenMP threads for this serving process: one query per search, so a pool
    only spins. Measured on the 1M-item HNSW (k=600): 7.5 ms CPU per search with 2
    threads, 1.4 ms with 1 (benchmarks/README.md, "Serving")."""
    import faiss

    faiss.omp_set_num_threads(max(1, int(n)))


def _gather(seq: list, idx: list[int]) -> list:
    """``[seq[i] for i in idx]`` at C speed (``operator.itemgetter``)."""
    if len(idx) > 1:
        return list(operator.itemgetter(*idx)(seq))
    return [seq[i] for i in idx]


def _shared(values: list) -> list:
    """``values`` with equal strings made one object (at load time): a request's gathers
    and the re-rank's set and dict lookups then touch a few hot objects instead of one
    object per catalogue row spread over memory (categories, creator groups, creators)."""
    one: dict = {}
    return [one.setdefault(v, v) for v in values]


def _codes(values: list) -> np.ndarray:
    """(N,) int64: one code per distinct value, in order of first appearance (a bijection,
    unlike the vocabularies' indices, which map every out-of-vocabulary string to one code)."""
    one: dict = {}
    return np.fromiter((one.setdefault(v, len(one)) for v in values), dtype=np.int64, count=len(values))


def policy_from_config(rc) -> RerankPolicy:
    """The pure re-ranking policy for a ``RerankConfig``."""
    return RerankPolicy(max_per_category=rc.max_per_category, max_per_creator=rc.max_per_creator, drop_seen=rc.drop_seen,
                        mmr_lambda=rc.mmr_lambda, fairness_group=rc.fairness_group,
                        fairness_min_share=rc.fairness_min_share, explore_epsilon=rc.explore_epsilon,
                        explore_position=rc.explore_position)


class Recommender(CandidateStage, RankStage):
    """Implements ``pipeline.protocol.FeedService`` over loaded ``ModelArtifacts``; the
    retrieve stage is ``pipeline.candidates.CandidateStage``, enrich and rank are
    ``pipeline.rank_stage.RankStage``."""

    def __init__(self, art: ModelArtifacts, cfg: FeedrankConfig | None = None, clock=time.time) -> None:
        self.art = art
        self.cfg = cfg or art.cfg
        self.clock = clock
        self.catalog = art.catalog
        self.n_categories = len(art.vocabs["category"])
        self.prior_ctr = float(art.info.get("prior_ctr", 0.05))
        rc = self.cfg.rerank
        self.policy = policy_from_config(rc)
        self.blocklists = BlocklistSource(rc.blocklist_file or None)
        wait = self.cfg.pipeline.rank_batch_wait_ms
        self.batcher = MicroBatcher(self._score_many, max_wait_ms=wait, max_batch=32) if wait > 0 else None
        slo = self.cfg.pipeline.slo_ms
        self.controller = TierController(slo_ms=slo) if slo > 0 else None
        ttl = self.cfg.rerank.seen_ttl_hours * 3600.0 or None
        self.state = OnlineState(len(self.catalog), self.cfg.retrieval.history_len, self.cfg.pipeline.seen_memory, seen_ttl_s=ttl)
        if art.engagement is not None:  # the ranker's per-user counters: bounded like the online state's users
            art.engagement.limit_users(self.state.max_users)
        snap = art.snapshot
        self.state.item_impressions[:] = snap.item_impressions
        self.state.item_clicks[:] = snap.item_clicks
        for uid, hist, n in zip(snap.user_ids.tolist(), snap.histories, snap.user_clicks.tolist()):
            self.state.load_user(uid, hist, n)
        self._init_candidates()
        self.max_item_age_s = art.info.get("max_item_age_s")
        self.live_catalog = LiveCatalog(self.catalog.published_at, self._index_keys(np.arange(len(self.catalog))),
                                        max_age_s=self.max_item_age_s)
        self._item_ids_list = self.catalog.item_ids.tolist()
        self._add_lock = threading.Lock()
        self._views: weakref.WeakSet[Recommender] = weakref.WeakSet()  # settings views (with_settings)
        self._creators_list = _shared(self.catalog.creators.astype(str).tolist())
        self._groups_list = _shared(self.catalog.creator_groups.astype(str).tolist())
        self._categories_list = _shared(self.catalog.categories.tolist())
        self._titles_list = [str(t) for t in self.catalog.titles.tolist()]  # the response's titles, by row
        self._set_rerank_codes()
        rk = art.info.get("ranking") or {}
        self.dwell_prior = float((rk.get("spec") or {}).get("dwell_prior", 0.0))
        self._user_tower = numpy_user_tower(art.two_tower)  # batch-1 queries in numpy (exported at load)
        limit_blas_threads(self.cfg.serving.torch_threads)  # the numpy paths: see ranking/runtime.py
        _limit_faiss_threads(self.cfg.serving.torch_threads)
        self.ranker_rt = None if art.ranker is None else RankerRuntime(
            art.ranker, art.ranker_small, art.calibrator, float(rk.get("mean_log_dwell", 0.0)))
        if self.ranker_rt is not None and self.cfg.pipeline.rank_budget_ms > 0:
            sample = art.ranker.mean.numpy()[None, :].repeat(8, axis=0)
            self.ranker_rt.measure(sample, np.zeros(8, dtype=np.int64))
        self.live = None  # features.live.LiveFeatures, attached by the serving factory
        self.warm_up()

    def with_settings(self, settings: Sequence[tuple[str, object]]) -> Recommender:
        """A view with runtime settings changed (``("rerank.mmr_lambda", 0.7)``, ...): the same
        model, online state and blocklist; only request-time behaviour differs. Used for
        A/B arms. Raises ConfigError if a setting is unknown or of the wrong type."""
        raw = config_to_dict(self.cfg)
        for key, value in settings:
            section, name = key.split(".", 1)
            raw.setdefault(section, {})[name] = value
        view = copy.copy(self)
        view.cfg = config_from_dict(raw)
        view.policy = policy_from_config(view.cfg.rerank)
        view._popular_lock = threading.Lock()
        view._popular, view._popular_at, view._live, view._live_at = np.zeros(0, dtype=np.int64), -np.inf, None, -np.inf
        view._source_pool = None
        self._views.add(view)  # one set, shared by the base and its views (copy.copy)
        return view

    def _sync_views(self) -> None:
        """After the catalogue changed (``add_items``, ``set_expiry``): every settings view takes
        the base's new catalogue state (everything but its own settings and caches,
        ``VIEW_OWN``) and forgets its cached live set and popular list, so a view made before
        the change never mixes the old catalogue's arrays with the grown counters."""
        for view in list(self._views):
            if view is self:
                continue
            for key, value in list(self.__dict__.items()):
                if key not in VIEW_OWN:
                    view.__dict__[key] = value
            view._reset_caches()

    def _set_rerank_codes(self) -> None:
        """Integer codes of each row's category and creator: the re-rank's caps only compare
        them for equality, and a request gathers 500 codes from an array ~6x faster than 500
        strings from a list (benchmarks/README.md, "Serving", round 3). One tuple, swapped
        whole: a concurrent request sees the old or the new codes."""
        self._rerank_codes = (_codes(self._categories_list), _codes(self._creators_list))

    def _index_keys(self, rows: np.ndarray, catalog=None) -> dict[str, np.ndarray]:
        """The keys ``LiveCatalog`` indexes rows by: category (fresh), creator and
        subcategory (followed)."""
        c = self.catalog if catalog is None else catalog
        return {"category": c.cat_idx[rows], "creator": c.creator_hash[rows], "subcategory": c.sub_idx[rows]}

    # ------------------------------------------------------------------ FeedService
    @property
    def model_version(self) -> str:
        return self.art.version

    def stage_names(self) -> tuple[str, ...]:
        return STAGES

    def add_items(self, records: list[dict], now: float | None = None) -> dict:
        """Create or update items (validated dicts: item_id, title, category, subcategory,
        creator, published_at, expires_at). Each gets content + item-tower vectors and goes
        into the ANN index at once: retrievable by the next request, no rebuild. An update
        moves the id to a new row; the old row is never retrieved again."""
        from feedrank.features.content import ContentCache, content_encoder, default_cache_dir, encode_titles
        from feedrank.retrieval.catalog_adds import append_items, items_frame
        from feedrank.retrieval.encode import encode_items

        if not records:
            return {"created": 0, "updated": 0}
        now = float(self.clock()) if now is None else float(now)
        records = [dict(r, published_at=now if r.get("published_at") is None else r["published_at"]) for r in records]
        rc = self.cfg.retrieval
        tt = self.art.two_tower
        with self._add_lock, torch.inference_mode():
            catalog, rows, replaced = append_items(self.catalog, items_frame(records), self.art.vocabs, rc.id_buckets, rc.text_buckets)
            if tt.dims.content_dim:
                enc = content_encoder(self.art.info.get("content_encoder") or rc.content_encoder)
                vec = encode_titles(enc, list(catalog.titles[rows]), ContentCache(rc.content_cache_dir or default_cache_dir()))
                tt.set_content(np.concatenate([tt.content.numpy(), vec]))
            vectors = encode_items(tt, catalog, rows)
            expires = np.array([np.inf if r.get("expires_at") is None else float(r["expires_at"]) for r in records])
            with self.state._lock:  # counters grow with the catalogue
                pad = np.zeros(len(rows))
                self.state.item_impressions = np.concatenate([self.state.item_impressions, pad])
                self.state.item_clicks = np.concatenate([self.state.item_clicks, pad])
            self.art.item_vectors = np.concatenate([self.art.item_vectors, vectors])
            if self.art.engagement is not None:  # the ranker's counters grow with the catalogue
                self.art.engagement.grow(catalog.cat_idx[rows])
            self._item_ids_list = catalog.item_ids.tolist()
            self._categories_list = _shared(catalog.categories.tolist())
            self._creators_list = _shared(catalog.creators.astype(str).tolist())
            self._groups_list = _shared(catalog.creator_groups.astype(str).tolist())
            self._titles_list = [str(t) for t in catalog.titles.tolist()]
            self._set_rerank_codes()
            if self.live is not None:  # before any request can see the new rows
                self.live.extend_catalog(self._live_binding, catalog.item_ids[rows].tolist(), catalog.categories[rows].tolist())
            # liveness first: a request that sees the new catalogue must find its rows there
            self.live_catalog.add(rows, catalog.published_at[rows], self._index_keys(rows, catalog), expires, replaced)
            self.catalog = catalog
            self.art.catalog = catalog
            self.art.index.add(vectors, rows)
            self._reset_caches()
            self._sync_views()
        return {"created": int(len(rows) - len(replaced)), "updated": int(len(replaced))}

    def set_expiry(self, expiries: dict[str, float | None]) -> int:
        """Move the expiry of existing items in place (item id -> epoch seconds, None = never):
        same rows, vectors and counters. Unknown ids are skipped; returns how many were set."""
        index = self.catalog.index
        known = [(index[i], np.inf if e is None else float(e)) for i, e in expiries.items() if i in index]
        if known:
            rows, exp = zip(*known)
            self.live_catalog.set_expiry(np.asarray(rows, dtype=np.int64), np.asarray(exp, dtype=np.float64))
            self._reset_caches()
            self._sync_views()
        return len(known)

    def has_item(self, item_id: str) -> bool:
        return item_id in self.catalog.index

    def seen_items(self, user_id: str, now: float | None = None) -> tuple[str, ...]:
        """The item ids the user was shown and this process remembers (within the seen TTL),
        least recently shown first."""
        return self.state.seen_items(user_id, float(self.clock()) if now is None else float(now))

    def get_item(self, item_id: str) -> Item | None:
        idx = self.catalog.index.get(item_id)
        return None if idx is None else self.catalog.item(idx)

    def observe(self, events: Sequence[Event]) -> None:
        """Fold events into the online state and the ranker's engagement counters. A run of
        impressions of one user at one time (a served feed, logged on the request path) goes
        to the engagement counters in one vectorised call (``observe_impressions``)."""
        eng = self.art.engagement
        run: list[tuple[Event, int]] = []
        for ev in events:
            idx = self.catalog.index.get(ev.item_id)
            if idx is None:
                continue
            if ev.kind == EventKind.IMPRESSION:
                if run and (run[0][0].user_id != ev.user_id or run[0][0].ts != ev.ts):
                    self._observe_impressions(run)
                    run = []
                run.append((ev, idx))
                continue
            if run:
                self._observe_impressions(run)
                run = []
            if eng is not None:
                eng.observe(ev.user_id, idx, ev.kind.value, ev.position, float(ev.ts), ev.dwell_ms)
            if ev.kind == EventKind.CLICK:
                self.state.record_click(ev.user_id, idx)
        if run:
            self._observe_impressions(run)

    def _observe_impressions(self, run: list[tuple[Event, int]]) -> None:
        """Impressions (event, catalogue row) of one user at one time, in order."""
        first = run[0][0]
        rows = np.fromiter((i for _, i in run), np.int64, len(run))
        if self.art.engagement is not None:
            self.art.engagement.observe_impressions(first.user_id, rows,
                                                    np.fromiter((ev.position or 0 for ev, _ in run), np.int64, len(run)),
                                                    float(first.ts))
        self.state.record_impressions(first.user_id, [ev.item_id for ev, _ in run], rows, first.ts)

    def warm_up(self) -> None:
        """Run one request through every stage so the first real one is not slow."""
        self.recommend(FeedRequest(user_id="__warmup__", k=10, deadline_ms=10_000.0))

    # ------------------------------------------------------------------ the pipeline
    def recommend(self, request: FeedRequest) -> FeedResponse:
        # no torch.inference_mode() here: the request path is numpy (user tower and ranker
        # exported at load); the torch fallbacks (``_user_vectors`` without the numpy tower,
        # ``RankerRuntime.score`` for a variant without a numpy form) enter it themselves
        return self._recommend(request)

    def _recommend(self, request: FeedRequest) -> FeedResponse:
        t_start = time.perf_counter()
        now = float(request.now) if request.now is not None else float(self.clock())
        deadline_ms = float(request.deadline_ms or self.cfg.pipeline.deadline_ms)
        request_id = request.request_id or uuid.uuid4().hex
        timings: dict[str, float] = {}
        k = int(request.k)

        def lap(stage: str, t0: float) -> float:
            t1 = time.perf_counter()
            timings[stage] = round((t1 - t0) * 1000.0, 3)
            return t1

        t = time.perf_counter()
        ctx = self.state.context(request.user_id, now)
        if request.also_seen:
            ctx = replace(ctx, seen=ctx.seen | frozenset(request.also_seen))
        ctx, live_status = self._live_context(ctx, request.user_id, now)
        t = lap("context", t)

        allowed = self.controller.tier if self.controller is not None else "full"
        tier = "full"
        try:
            if allowed == "fallback":
                raise _Shed()
            cand, sources, retr_scores, user_vec, aff = self._retrieve(ctx, now)
        except Exception as exc:  # a broken or shed retrieval must not fail the request: popular fallback
            if not isinstance(exc, _Shed):
                log.exception("retrieval failed; serving the popular fallback (request_id=%s)", request_id)
            tier = "fallback"
            cand = self._popular_list(now)[: self.cfg.pipeline.rank_max_candidates]
            sources = ["popular"] * len(cand)
            retr_scores = np.zeros(len(cand), dtype=np.float32)
            user_vec, aff = None, None
        t = lap("retrieve", t)
        funnel = {f"source:{s}": int(n) for s, n in zip(*np.unique(np.asarray(sources, dtype=str), return_counts=True))} if request.explain else {}

        scores = retr_scores.astype(np.float64)
        dense, variant = None, "full"
        elapsed_ms = (time.perf_counter() - t_start) * 1000.0
        if tier == "full" and (self.art.ranker is None or elapsed_ms > 0.6 * deadline_ms):
            tier = "reduced"
        if tier == "full" and len(cand):
            budget = self.cfg.pipeline.rank_budget_ms
            if budget > 0:  # the stage budget, and never more than what the deadline has left
                budget = min(budget, 0.5 * (deadline_ms - elapsed_ms))
            variant, m = self.ranker_rt.plan(budget, len(cand))
            if allowed == "reduced":  # the ladder: smaller ranker, fewer candidates
                variant = "distilled" if "distilled" in self.ranker_rt.names else variant
                m = min(m, self.cfg.pipeline.reduced_candidates)
            if variant != "full" or m < len(cand):
                tier = "reduced"
            if m < len(cand):  # rank the first m (retrieval order is best-first per source)
                cand, sources, retr_scores = cand[:m], list(sources)[:m], retr_scores[:m]
            cats, ages = self.catalog.cat_idx[cand], self.catalog.age_seconds(cand, now)  # once: enrich and rank read both
            dense = self._enrich(cand, ctx, now, user_vec, aff, request.user_id, live_status=live_status, cats=cats, ages=ages)
            t = lap("enrich", t)
            scores = self._score(variant, dense, cats, ages)
            t = lap("rank", t)
            order = np.argsort(-scores, kind="stable").tolist()
        else:
            # retrieval order is already best-first per source; keep it
            order = list(range(len(cand)))
            if tier != "fallback":
                scores = np.linspace(1.0, 0.0, num=max(len(cand), 1))[: len(cand)]

        kept, props = self._rerank(cand, None, scores, order, ctx, k, request_id, explore=tier == "full")
        if len(kept) < k:  # the user has seen nearly everything: top up from popular
            have = set(_gather(self._item_ids_list, cand[kept].tolist()))
            extra = [int(i) for i in self._popular_list(now)
                     if self._item_ids_list[i] not in have and self._item_ids_list[i] not in ctx.seen][: k - len(kept)]
            base = len(cand)
            cand = np.concatenate([cand, np.asarray(extra, dtype=np.int64)])
            sources = list(sources) + ["popular"] * len(extra)
            scores = np.concatenate([scores, np.zeros(len(extra))])
            kept = kept + list(range(base, base + len(extra)))
            props = props + [1.0] * len(extra)
        lap("rerank", t)

        explanations: dict[int, tuple[tuple[str, float], ...]] = {}
        if request.explain and dense is not None:
            explanations = self._explain([j for j in kept if j < len(dense)], dense, cand, variant, now, scores)
        items = []
        ids, titles, categories, creators = self._item_ids_list, self._titles_list, self._categories_list, self._creators_list
        explored = 1.0 - self.policy.explore_epsilon - 1e-9
        for rank, (j, idx, score, prop) in enumerate(zip(kept, cand[kept].tolist(), scores[kept].tolist(), props), start=1):
            items.append(ScoredItem(item_id=ids[idx], score=round(score, 6), rank=rank,
                                    source="explore" if prop < explored else sources[j],
                                    title=titles[idx], category=categories[idx], creator=creators[idx],
                                    propensity=1.0 if prop == 1.0 else round(float(prop), 6),
                                    explanation=explanations.get(j, ()) if explanations else ()))
        timings["total"] = round((time.perf_counter() - t_start) * 1000.0, 3)
        if self.controller is not None:
            self.controller.record(timings["total"])
        return FeedResponse(request_id=request_id, user_id=request.user_id, items=tuple(items),
                            model_version=self.model_version, tier=tier, timings_ms=timings,
                            features=max(live_status, key=("local", "live", "baseline", "default").index),
                            funnel={**funnel, "ranked": len(order) if dense is not None else 0, "shown": len(items)} if request.explain else {})

    # ------------------------------------------------------------------ stages
    def _rerank(self, cand: np.ndarray, cand_ids: list[str] | None, scores: np.ndarray, order: list[int],
                ctx: UserContext, k: int, request_id: str, explore: bool = True) -> tuple[list[int], list[float]]:
        """Apply the re-ranking policies; exploration draws are seeded by the request id.
        Degraded tiers do not explore: they serve the safest list. ``cand`` holds distinct
        rows (the merged candidates); ``cand_ids``: their item ids (None: gathered here when
        needed).

        Without a blocklist (which matches category and creator names) the caps see integer
        codes for categories and creators, and the creator groups are gathered only when the
        exposure floor is on: the same decisions as with the strings (tested). When every
        item id has one catalogue row (no item was updated while serving), items are told
        apart by row and the seen items become rows (O(seen)) instead of 500 ids being
        gathered per request: the same decisions (an id is seen iff its one row is)."""
        policy = self.policy
        blocklist = self.blocklists.current()
        if blocklist or not explore:
            policy = replace(policy, blocklist=blocklist, explore_epsilon=policy.explore_epsilon if explore else 0.0)
        idx = cand.tolist()
        codes = self._rerank_codes
        if blocklist or len(codes[0]) < len(self._categories_list):  # names needed (or codes not yet extended)
            categories, creators = _gather(self._categories_list, idx), _gather(self._creators_list, idx)
        else:
            categories, creators = codes[0][cand].tolist(), codes[1][cand].tolist()
        catalog = self.catalog
        seen = ctx.seen
        if cand_ids is None and not blocklist and len(catalog.index) == len(catalog) and len(codes[0]) == len(catalog):
            cand_ids, distinct = idx, True  # rows stand for the ids: one row per id
            if seen and policy.drop_seen:
                index = catalog.index
                seen = {index[s] for s in seen if s in index}
        else:
            if cand_ids is None:
                cand_ids = _gather(self._item_ids_list, idx)
            distinct = False
        slate = Slate(
            distinct=distinct,
            item_ids=cand_ids,
            categories=categories,
            creators=creators,
            groups=_gather(self._groups_list, idx) if policy.fairness_min_share > 0 else (),
            scores=np.asarray(scores, dtype=np.float64),
            vectors=self.art.item_vectors[cand] if policy.mmr_lambda < 1.0 else None,
        )
        rng = np.random.default_rng(zlib.crc32(request_id.encode()))
        return rerank(slate, order, seen, k, policy, u=float(rng.random()), pick=int(rng.integers(1 << 30)))

    def attach_live(self, live) -> None:
        """Read real-time features from ``live`` (a ``features.live.LiveFeatures``) and bind
        it to this model's catalogue and training snapshot."""
        self._live_binding = live.bind(self.art.snapshot, list(self._item_ids_list), self._categories_list)
        self.live = live
        with self._popular_lock:
            self._popular = np.zeros(0, dtype=np.int64)

    def _live_context(self, ctx: UserContext, user_id: str, now: float) -> tuple[UserContext, list[str]]:
        """The user's published record from the store (one round trip) when it knows more
        clicks than this process does (another replica saw them): its recent clicks become
        the history. Returns (context, [feature status])."""
        if self.live is None:
            return ctx, ["local"]
        user, status = self.live.read_user(user_id, now, self._live_binding)
        if user is not None and user.n_clicks > ctx.n_clicks:
            rows = self._live_binding.rows(user.recent_hashes)[-len(ctx.history):]
            if rows:
                hist = np.full(len(ctx.history), -1, dtype=np.int64)
                hist[-len(rows):] = rows
                ctx = UserContext(hist, ctx.seen, user.n_clicks, True)
        return ctx, [status]
