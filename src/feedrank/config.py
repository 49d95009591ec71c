"""Frozen config dataclasses per stage; YAML files plus dotted CLI overrides.

    cfg = load_config("configs/demo.yaml", overrides=["ranking.epochs=3"])

Unknown keys, wrong types and out-of-range values are all rejected together: the
``ConfigError`` lists every problem, each with its dotted path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from feedrank.errors import ConfigError


def _rng(lo: float | None = None, hi: float | None = None) -> dict[str, float | None]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class SplitConfig:
    """Time split: events at or after the boundary form the test set."""

    test_fraction: float = field(default=0.2, metadata=_rng(0.01, 0.9))
    # Requests crossing the boundary: snap it to a clean cut, drop the crossing requests, or
    # auto (snap when a clean cut lies within 5% of the fraction, else drop: big worlds).
    straddle: Literal["auto", "snap", "drop"] = "auto"


@dataclass(frozen=True)
class RetrievalConfig:
    embed_dim: int = field(default=32, metadata=_rng(4, 1024))
    out_dim: int = field(default=32, metadata=_rng(4, 1024))
    history_len: int = field(default=30, metadata=_rng(1, 1000))
    id_buckets: int = field(default=262_144, metadata=_rng(16, None))
    text_buckets: int = field(default=32_768, metadata=_rng(16, None))
    epochs: int = field(default=3, metadata=_rng(1, 1000))
    batch_size: int = field(default=512, metadata=_rng(2, None))
    lr: float = field(default=3e-3, metadata=_rng(0.0, 10.0))
    # 0.15 (was 0.07) with id_dropout 0.3: served replay recall@100 +0.002-0.003 on 3 seeds (docs/retrieval.md)
    temperature: float = field(default=0.15, metadata=_rng(1e-4, 10.0))
    max_train_examples: int = field(default=400_000, metadata=_rng(1, None))
    index: Literal["auto", "flat", "hnsw", "ivfflat", "ivfsq", "ivfpq"] = "auto"
    # Items older than this are not retrieved: -1 = learn it from the data (the age by
    # which 99% of training clicks happened), 0 = no limit.
    max_item_age_hours: float = field(default=-1.0, metadata=_rng(-1.0, None))
    # Title content vectors: auto = MiniLM when feedrank[content] is installed, else hashed.
    content_encoder: Literal["auto", "minilm", "hashed", "none"] = "hashed"
    content_cache_dir: str = ""  # empty: $FEEDRANK_CACHE/content or ~/.cache/feedrank/content
    # Hard negatives: share of rows with one, and the share of those that are shown-not-clicked
    # impressions (the rest are mined from the model's ranks [mined_rank_min, mined_rank_max)).
    hard_negative_ratio: float = field(default=0.0, metadata=_rng(0.0, 1.0))  # measured: 0 wins (docs/retrieval.md)
    hard_negative_mix: float = field(default=0.5, metadata=_rng(0.0, 1.0))
    mined_rank_min: int = field(default=100, metadata=_rng(0, None))
    mined_rank_max: int = field(default=500, metadata=_rng(1, None))
    # ANN: auto picks flat below flat_max_items, hnsw below 1M items, ivfsq below
    # hnsw_max_items, else ivfpq (retrieval/index.py, docs/retrieval.md "Index").
    flat_max_items: int = field(default=100_000, metadata=_rng(0, None))
    hnsw_max_items: int = field(default=5_000_000, metadata=_rng(0, None))
    # auto: IVF-Flat from this many items up to hnsw_max_items (HNSW below): serving asks for
    # ann_k * ann_oversample = 600 neighbours, which an HNSW search pays for and an IVF scan
    # does not (1M: 0.48 vs 1.14 ms CPU at recall@100 0.973 vs 0.942; docs/retrieval.md)
    ivf_flat_min_items: int = field(default=1_000_000, metadata=_rng(0, None))
    ivf_flat_nprobe: int = field(default=64, metadata=_rng(1, None))
    # auto from ivf_flat_min_items: IVF with float16 residuals, nlist 2*sqrt(N): the recall of
    # ivfflat at ~15-25% less CPU per query and half the memory (docs/retrieval.md "IVF-SQ from 1M")
    ivf_sq_nprobe: int = field(default=64, metadata=_rng(1, None))
    hnsw_m: int = field(default=32, metadata=_rng(4, 256))
    # efSearch 128 at 1M x 64-d: recall@100 0.9975, p50 0.40 ms vs exact 29.5 ms (docs/retrieval.md);
    # a search uses max(efSearch, k)
    hnsw_ef_search: int = field(default=128, metadata=_rng(1, None))
    ivf_nprobe: int = field(default=32, metadata=_rng(1, None))
    # IVF-PQ re-ranks ivf_refine * k PQ hits with 8-bit scalar-quantised vectors (0 = PQ only:
    # recall@100 0.59 at 1M x 64-d, below the floor; docs/retrieval.md)
    ivf_refine: int = field(default=4, metadata=_rng(0, 64))
    # An index whose recall@100 against exact search is below this is not published.
    recall_floor: float = field(default=0.9, metadata=_rng(0.0, 1.0))
    # Freshness prior (retrieval/prior.py): fit w in u.v/T - w * age_days at build time and
    # apply it at serving (ANN top ann_oversample * ann_k plus recent items, rescored).
    age_prior: bool = True
    # Which training clicks and towers fit the prior's weights: holdout_tail = the newest
    # split.test_fraction of the train clicks, scored by a second two-tower trained without
    # them (the served towers have memorised the clicks they would score); in_sample = the
    # newest half, scored by the served towers (demo world replay recall@100: docs/retrieval.md).
    prior_fit: Literal["holdout_tail", "in_sample"] = "holdout_tail"
    # How the prior's category term estimates the user's category preference from the history
    # (retrieval/prior_terms.CategoryShare): fitted = a per-click recency decay, the smoothing
    # strength and a uniform or population prior, picked by the prior fit's likelihood on its
    # clicks (demo world replay recall@100 +0.007-0.010 on 3 seeds); uniform = the towers'
    # category_affinity, every click 1, uniform smoothing 1 (docs/retrieval.md, "Category
    # preference estimate").
    category_estimator: Literal["uniform", "fitted"] = "fitted"
    # Weights of the prior for a user with no history (AgePrior.cold_user), fitted on every click
    # a user made within cold_user_window_hours of their first one, each scored with an empty
    # history (the feed of a user the store knows nothing about must serve that user's first
    # visit, not only its first click). auto: kept only when they rank the held-out first-visit
    # clicks of the tail's new users better than the main weights do (hits at 10 + at 100 per
    # click, by more than one standard error: retrieval/prior.prefer);
    # always; never (docs/retrieval.md, "Users without history").
    cold_user_weights: Literal["never", "always", "auto"] = "auto"
    cold_user_window_hours: float = field(default=24.0, metadata=_rng(0.0, None))
    # The prior's popularity term bends: w_pop * log1p(clicks) + w_pop2 * log1p(clicks)**2 (both
    # >= 0, fitted), so the most clicked items can weigh more than a power law of their clicks
    # gives them. auto: fitted both ways, kept when it ranks held-out clicks of the prior's tail
    # better (the same rule); always; never (docs/retrieval.md, "Popularity curve").
    popularity_curve: Literal["never", "always", "auto"] = "auto"
    # The prior's terms as offsets of the two-tower training logit, each with a learned weight
    # (retrieval/train_offsets.py): none; category (log share of the item's category in the
    # user's history); prior (category + log1p point-in-time clicks - age, and items not yet
    # published at the click are no negatives of it). u.v then learns what they do not explain.
    train_offsets: Literal["none", "category", "prior"] = "none"
    # Share of item occurrences in training whose hashed-id row is dropped (the item tower then
    # learns vectors from category, creator and title alone, as it must for a new item).
    id_dropout: float = field(default=0.3, metadata=_rng(0.0, 0.95))


@dataclass(frozen=True)
class RankingConfig:
    hidden: tuple[int, ...] = (64, 32)
    epochs: int = field(default=2, metadata=_rng(1, 1000))
    batch_size: int = field(default=1024, metadata=_rng(2, None))
    lr: float = field(default=2e-3, metadata=_rng(0.0, 10.0))
    weight_decay: float = field(default=1e-5, metadata=_rng(0.0, 1.0))
    ctr_prior: float = field(default=20.0, metadata=_rng(0.0, None))
    max_train_examples: int = field(default=600_000, metadata=_rng(1, None))
    # model: explicit interactions (docs/ranking.md has the measurement behind the default)
    interaction: Literal["dcn", "dot", "mlp"] = "mlp"
    cross_layers: int = field(default=2, metadata=_rng(0, 8))
    engagement_features: bool = True   # user-category, debiased CTR, dwell, creator counters
    loss: Literal["pointwise", "pairwise", "listwise"] = "pointwise"
    dwell_loss_weight: float = field(default=0.05, metadata=_rng(0.0, None))
    fairness_weight: float = field(default=0.0, metadata=_rng(0.0, None))
    calibration: Literal["none", "platt", "isotonic"] = "isotonic"
    calibration_fraction: float = field(default=0.1, metadata=_rng(0.0, 0.5))
    distill_hidden: tuple[int, ...] = (16,)   # () = no distilled ranker
    distill_epochs: int = field(default=1, metadata=_rng(1, 1000))
    # serving-time (no retrain): score = click_weight * p + dwell_weight * p * E[dwell]/mean dwell
    click_weight: float = field(default=1.0, metadata=_rng(0.0, None))
    dwell_weight: float = field(default=0.0, metadata=_rng(0.0, None))
    freshness_tau_hours: float = field(default=0.0, metadata=_rng(0.0, None))  # 0 = off


@dataclass(frozen=True)
class RerankConfig:
    max_per_category: int = field(default=3, metadata=_rng(1, None))
    max_per_creator: int = field(default=2, metadata=_rng(1, None))
    drop_seen: bool = True
    seen_ttl_hours: float = field(default=72.0, metadata=_rng(0.0, None))  # 0 = remember until evicted
    mmr_lambda: float = field(default=1.0, metadata=_rng(0.0, 1.0))        # 1 = MMR off
    fairness_group: str = "new"
    fairness_min_share: float = field(default=0.0, metadata=_rng(0.0, 1.0))  # 0 = off
    explore_epsilon: float = field(default=0.05, metadata=_rng(0.0, 1.0))
    explore_position: int = field(default=4, metadata=_rng(0, None))
    blocklist_file: str = ""   # YAML {items: [...], creators: [...], categories: [...]}, reloaded on change


@dataclass(frozen=True)
class PipelineConfig:
    deadline_ms: float = field(default=150.0, metadata=_rng(1.0, None))
    ann_k: int = field(default=300, metadata=_rng(1, None))
    fresh_k: int = field(default=50, metadata=_rng(0, None))
    popular_k: int = field(default=100, metadata=_rng(0, None))
    fresh_hours: float = field(default=24.0, metadata=_rng(0.0, None))
    # Candidate sources (retrieval/sources.py, docs/retrieval.md): trending = top decayed
    # 6 h click counters; followed = recent items of the creators/subcategories clicked at
    # least follow_min_clicks times in the user's recent history.
    trending_k: int = field(default=50, metadata=_rng(0, None))
    trending_min_clicks: float = field(default=1.0, metadata=_rng(0.0, None))
    followed_k: int = field(default=50, metadata=_rng(0, None))
    follow_min_clicks: int = field(default=2, metadata=_rng(1, None))
    followed_hours: float = field(default=72.0, metadata=_rng(0.0, None))
    # A source (fresh, followed, trending) that takes longer than this is dropped and its
    # quota filled from the fallbacks (trending, then popular); 0 = no limit.
    source_budget_ms: float = field(default=50.0, metadata=_rng(0.0, None))
    source_workers: int = field(default=0, metadata=_rng(0, 64))  # >0: sources run in a thread pool
    ann_oversample: int = field(default=2, metadata=_rng(1, 100))  # with the age prior: ANN fetches this x ann_k
    rank_max_candidates: int = field(default=500, metadata=_rng(1, None))
    # ranking stage budget (0 = off): candidates ranked and ranker variant adapt to fit it
    rank_budget_ms: float = field(default=0.0, metadata=_rng(0.0, None))
    # Degradation ladder (pipeline/degrade.py): when recent p99 exceeds slo_ms the service steps
    # down full -> reduced (distilled ranker, reduced_candidates) -> fallback (popular, no model)
    # and back up with hysteresis. 0 = off.
    slo_ms: float = field(default=0.0, metadata=_rng(0.0, None))
    reduced_candidates: int = field(default=100, metadata=_rng(1, None))
    # Coalesce concurrent ranker calls into one batch, waiting at most this long (0 = off).
    rank_batch_wait_ms: float = field(default=0.0, metadata=_rng(0.0, 50.0))
    seen_memory: int = field(default=500, metadata=_rng(0, None))


@dataclass(frozen=True)
class ServingConfig:
    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=_rng(0, 65535))
    max_k: int = field(default=200, metadata=_rng(1, None))
    events_dir: str = ""
    events_url: str = ""  # "" or file://DIR: the embedded log in events_dir; redis://host:port/db?stream=events
    max_events_per_request: int = field(default=1000, metadata=_rng(1, None))
    # torch threads per request: requests run concurrently in the server's pool, so
    # one thread each avoids oversubscribing the cores (p99 is lower, measured).
    torch_threads: int = field(default=1, metadata=_rng(1, 256))
    experiments_file: str = ""   # A/B experiments YAML (docs/experiments.md), reloaded on change
    # Write and admin endpoints need this key (X-API-Key or Authorization: Bearer); the
    # FEEDRANK_API_KEY environment variable overrides it; empty = open (local development).
    api_key: str = ""
    # server processes on the port (`feedrank serve`), one per core: one process runs one
    # pipeline at a time under the GIL (serving/workers.py; benchmarks/README.md). Every
    # reader of the event log reads every worker's partition; /metrics sums the workers.
    workers: int = field(default=2, metadata=_rng(1, 64))
    # each worker tails every worker's items.jsonl this often and indexes the items another
    # worker accepted (serving/item_sync.py): POST /v1/items is retrievable on every worker
    # within about this long (at most 30 s, well inside the 60 s contract)
    item_sync_s: float = field(default=2.0, metadata=_rng(0.05, 30.0))
    # server-logged impressions wait up to this long for more before one append + fsync
    # (data/impressions.py): fewer fsyncs; a crash loses at most this much, a clean stop nothing
    impression_linger_ms: float = field(default=50.0, metadata=_rng(0.0, 1000.0))
    # with several workers, a new connection goes to the worker with the fewest open ones
    # (serving/balance.py); false = the kernel's choice (the first idle worker to accept)
    balance_connections: bool = True
    # true: with several workers, a feed request that would wait behind others in its worker
    # joins a shorter queue at another worker, over a Unix socket (serving/offload.py). Off by
    # default: of two A/Bs of ten and six servers on the 1M world at 300 rps (benchmarks/README.md,
    # round 8) the first favoured it (median p99 67 vs 90 ms), the second did not (94 vs 67 ms)
    offload: bool = False
    # true: the live consumer thread applies events in small slices and waits while the
    # worker's event loop runs a request (features/consumer.py); off by default: no gain
    # measured (benchmarks/README.md, round 4); false = whole polls, 5 ms GIL switching
    consumer_yield: bool = False


@dataclass(frozen=True)
class FeaturesConfig:
    """Online feature store and real-time counters (docs/feature-store.md)."""

    store_url: str = "memory://"  # memory:// | sqlite:///path | redis://host:port/db
    ttl_s: float = field(default=604_800.0, metadata=_rng(0.0, None))  # cold after this long unwritten
    windows_s: tuple[int, ...] = (300, 3600, 86400)  # sliding windows of the item counters
    max_items: int = field(default=200_000, metadata=_rng(1, None))  # real-time item slots (memory bound)
    max_users: int = field(default=200_000, metadata=_rng(1, None))
    stall_s: float = field(default=60.0, metadata=_rng(0.0, None))  # no consumer progress -> batch baselines
    poll_s: float = field(default=0.1, metadata=_rng(0.001, None))  # consumer poll interval
    commit_every_s: float = field(default=5.0, metadata=_rng(0.0, None))  # consumer checkpoint interval
    live: bool = True  # serving: consume the event log into the store; read it in the request path
    # who consumes the event log into the live features when serving.workers > 1: "node" = one
    # consumer process per node publishing into shared memory that the workers read
    # (features/mirror.py, serving/node_consumer.py; embedded event log and memory:// store
    # only, else as "worker"); "worker" = every worker its own consumer thread, each reading
    # every event. Node by default: in two A/Bs of 4 servers each (1M world, 300 rps,
    # benchmarks/README.md round 9) it won every pair, median p99 47 vs 110 ms, less CPU
    consumer: Literal["worker", "node"] = "node"
    mirror_user_fields: int = field(default=96, metadata=_rng(8, 4096))  # fields per user record in the mirror
    read_timeout_ms: float = field(default=50.0, metadata=_rng(0.1, None))  # budget per store read; over -> defaults


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 0
    threads: int = field(default=2, metadata=_rng(1, 256))
    # step checkpoints (model, optimizer, data position, RNG) every this many optimizer steps
    # of a recipe, plus one at each epoch end; 0 = epoch ends only (docs/training-at-scale.md)
    checkpoint_every_steps: int = field(default=500, metadata=_rng(0, None))


@dataclass(frozen=True)
class FeedrankConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)


# ---------------------------------------------------------------- conversion and checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; return the converted value."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return None
        return _build(tp, value, path, problems)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            problems.append(f"{path}: must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path, problems)
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return None
        elem = args[0]
        return tuple(_convert(v, elem, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            problems.append(f"{path}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected float, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected str, got {value!r}")
        return value
    problems.append(f"{path}: unsupported config type {_type_name(tp)}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else key
            problems.append(f"{where}: unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        where = f"{prefix}.{name}" if prefix else name
        before = len(problems)
        value = _convert(data[name], hints[name], where, problems)
        if len(problems) == before and isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if lo is not None and value < lo:
                problems.append(f"{where}: must be >= {lo}, got {value!r}")
            if hi is not None and value > hi:
                problems.append(f"{where}: must be <= {hi}, got {value!r}")
        kwargs[name] = value
    if problems:
        return None
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any] | None, cls: type = FeedrankConfig) -> Any:
    """Build and validate a config; raise ConfigError listing every problem."""
    problems: list[str] = []
    cfg = _build(cls, dict(data or {}), "", problems)
    if problems:
        raise ConfigError(f"invalid config ({len(problems)} problem(s))", problems)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars/lists)."""
    problems: list[str] = []
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for ov in overrides:
        if "=" not in ov:
            problems.append(f"override {ov!r}: expected KEY=VALUE, e.g. ranking.epochs=3")
            continue
        key, raw = ov.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            problems.append(f"override {ov!r}: empty key")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(f"override {ov!r}: cannot parse value: {exc}")
            continue
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
            else:
                nxt = dict(nxt)
            node[p] = nxt
            node = nxt
        node[parts[-1]] = value
    if problems:
        raise ConfigError("invalid overrides", problems)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> FeedrankConfig:
    """Load a YAML config file (or the defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, list(overrides))
    return config_from_dict(data)
