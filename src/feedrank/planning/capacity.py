"""The capacity plan: every figure is a measured number (with its file and machine) or a
stated assumption (an option with its value), combined by arithmetic that is printed.

    lines = plan(PlanInputs(users=1e9, items=1e8), Measured.read("benchmarks/results", slo_ms=50))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from feedrank.planning.measured import Figure, Measured

DAY_S = 86_400.0
GIB = 1024.0**3


@dataclass(frozen=True)
class PlanInputs:
    users: float
    items: float
    dau_fraction: float = 0.5
    feeds_per_user: float = 10.0        # feed requests per daily active user per day
    k: int = 20                         # items per feed (impressions per request)
    candidates: int = 1000              # candidates ranked per request
    peak_to_average: float = 3.0
    utilization: float = 0.6            # plan nodes to run at this share of measured capacity
    slo_ms: float = 50.0
    embed_dim: int = 32
    pq_bytes: int = 16                  # bytes per item vector in IVF-PQ (m sub-quantisers x 8 bits)
    hnsw_m: int = 32
    node_memory_gib: float = 24.0
    node_cores: int = 2
    history_len: int = 30
    n_categories: int = 16
    store_overhead: float = 3.0         # key-value store bytes per payload byte (Redis-like)
    ctr: float = 0.05
    parquet_ratio: float = 0.2          # Parquet bytes per JSON-line byte for archived events
    retention_days: float = 90.0
    retrain_interval_hours: float = 24.0
    train_epochs: float = 1.0
    node_hour_usd: float = 0.10         # price of one node (node_cores cores, node_memory_gib) per hour
    storage_gb_month_usd: float = 0.02


@dataclass(frozen=True)
class Line:
    section: str
    name: str
    value: float | None
    unit: str
    formula: str
    sources: tuple[str, ...] = ()


def _fmt(x: float) -> str:
    if x is None or x != x:
        return "n/a"
    if abs(x) >= 1e6:
        return f"{x:.3g}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def plan(p: PlanInputs, m: Measured, bytes_per_event: Figure) -> list[Line]:
    out: list[Line] = []

    def add(section: str, name: str, value: float | None, unit: str, formula: str, *sources: str) -> float | None:
        out.append(Line(section, name, value, unit, formula, tuple(sources)))
        return value

    # ---------------------------------------------------------------- traffic
    dau = add("traffic", "daily active users", p.users * p.dau_fraction, "users", f"users {_fmt(p.users)} x dau_fraction {p.dau_fraction}")
    feeds = add("traffic", "feed requests per day", dau * p.feeds_per_user, "req/day", f"DAU x feeds_per_user {p.feeds_per_user}")
    avg_qps = add("traffic", "average QPS", feeds / DAY_S, "req/s", "feeds per day / 86,400")
    peak = add("traffic", "peak QPS", avg_qps * p.peak_to_average, "req/s", f"average x peak_to_average {p.peak_to_average}")

    # ---------------------------------------------------------------- serving
    if m.node_rps is not None:
        node = add("serving", "measured throughput of one serving node", m.node_rps.value, "req/s",
                   f"measured on {m.node_rps.machine}", m.node_rps.source)
        add("serving", "its p99 latency at that rate", m.node_p99_ms.value, "ms", "measured", m.node_p99_ms.source)
        add("serving", "serving nodes (whole pipeline per node)", math.ceil(peak / (node * p.utilization)), "nodes",
            f"ceil(peak {_fmt(peak)} / (node {_fmt(node)} x utilization {p.utilization}))")
    else:
        add("serving", "serving nodes", None, "nodes", "not measured: run `feedrank bench serve`")
    scale = p.candidates / m.feed_candidates.value if m.feed_candidates else 1.0
    for stage, per_candidate in (("retrieve", False), ("enrich", True), ("rank", True), ("rerank", False)):
        fig = m.feed_stage_ms.get(stage)
        if fig is None:
            continue
        ms = fig.value * (scale if per_candidate else 1.0)
        formula = f"measured p50 {fig.value:.3g} ms" + (f" x candidates {p.candidates}/{m.feed_candidates.value:.0f} (linear)" if per_candidate else "")
        add("stages", f"{stage}: CPU time per request", ms, "ms", formula, fig.source)
        cap = p.node_cores * 1000.0 / ms if ms > 0 else float("inf")
        add("stages", f"{stage}: nodes if run as its own service", math.ceil(peak / (cap * p.utilization)), "nodes",
            f"ceil(peak / ({p.node_cores} cores x 1000/{ms:.3g} ms x {p.utilization}))")

    # ---------------------------------------------------------------- memory
    raw = add("memory", "item vectors, raw float32", p.items * p.embed_dim * 4 / GIB, "GiB", f"items x dim {p.embed_dim} x 4 B")
    hnsw = add("memory", "HNSW graph links", p.items * p.hnsw_m * 2 * 4 / GIB, "GiB", f"items x M {p.hnsw_m} x 2 x 4 B (level 0)")
    pq = add("memory", "item vectors, IVF-PQ codes", p.items * (p.pq_bytes + 8) / GIB, "GiB", f"items x ({p.pq_bytes} B code + 8 B id)")
    usable = p.node_memory_gib * 0.5
    add("memory", "index shards with HNSW (raw vectors)", math.ceil((raw + hnsw) / usable), "shards",
        f"ceil((raw + links) / (node {p.node_memory_gib} GiB x 0.5 for the index))")
    add("memory", "index shards with IVF-PQ", math.ceil(pq / usable), "shards", "ceil(PQ codes / (node memory x 0.5))")
    user_b = p.history_len * 8 + p.n_categories * 4 + 16
    item_b = 3 * 2 * 8 + 8
    store = add("memory", "online feature store", (p.users * user_b + p.items * item_b) * p.store_overhead / GIB, "GiB",
                f"(users x {user_b} B + items x {item_b} B) x store_overhead {p.store_overhead}; "
                f"user = {p.history_len} clicks x 8 B + {p.n_categories} affinities x 4 B + 16 B; item = 3 windows x 2 counters x 8 B + 8 B")
    add("memory", "feature store nodes", math.ceil(store / (p.node_memory_gib * 0.7)), "nodes", "ceil(store / (node memory x 0.7))")

    # ---------------------------------------------------------------- events
    imps = add("events", "impressions per day", feeds * p.k, "events/day", f"feeds per day x k {p.k}")
    clicks = add("events", "clicks + dwell per day", imps * p.ctr * 2, "events/day", f"impressions x ctr {p.ctr} x 2")
    ev = imps + clicks
    add("events", "events per second at peak", ev / DAY_S * p.peak_to_average, "events/s", "events per day / 86,400 x peak_to_average")
    add("events", "bytes per event in the log", bytes_per_event.value, "B", "computed", bytes_per_event.source)
    log_gb = add("events", "event log per day", ev * bytes_per_event.value / 1e9, "GB/day", "events x bytes per event")
    arch = add("events", "archived (Parquet) over retention", log_gb * p.parquet_ratio * p.retention_days, "GB",
               f"log per day x parquet_ratio {p.parquet_ratio} x retention_days {p.retention_days}")
    if m.ingest_events_per_s is not None:
        add("events", "ingest nodes (embedded log)", math.ceil(ev / DAY_S * p.peak_to_average / (m.ingest_events_per_s.value * p.utilization)),
            "nodes", f"ceil(peak events/s / (measured {_fmt(m.ingest_events_per_s.value)} events/s x {p.utilization}))",
            m.ingest_events_per_s.source)

    # ---------------------------------------------------------------- training
    per_interval = p.retrain_interval_hours / 24.0
    train_nodes = 0
    for name, examples, what in (("two_tower", clicks / 2, "clicks"), ("ranker", imps, "impressions")):
        n_ex = add("training", f"{name}: examples per retrain", examples * per_interval, "examples",
                   f"{what} per day x {p.retrain_interval_hours} h / 24 h")
        fig = m.train_examples_per_s.get(name)
        if fig is None:
            add("training", f"{name}: training nodes", None, "nodes", "not measured: pass --model or run `feedrank bench scale`")
            continue
        nodes = math.ceil(n_ex * p.train_epochs / (fig.value * p.retrain_interval_hours * 3600.0))
        train_nodes += nodes
        add("training", f"{name}: training nodes", nodes, "nodes",
            f"ceil(examples x epochs {p.train_epochs} / (measured {_fmt(fig.value)} ex/s x {p.retrain_interval_hours} h)); "
            "assumes linear data-parallel scaling", fig.source)

    # ---------------------------------------------------------------- cost
    serving_nodes = next((ln.value for ln in out if ln.name.startswith("serving nodes") and ln.value), 0) or 0
    store_nodes = next((ln.value for ln in out if ln.name == "feature store nodes"), 0) or 0
    ingest_nodes = next((ln.value for ln in out if ln.name == "ingest nodes (embedded log)"), 0) or 0
    nodes = serving_nodes + store_nodes + ingest_nodes + train_nodes
    add("cost", "nodes in all", nodes, "nodes", "serving + feature store + ingest + training (training nodes run all month)")
    add("cost", "compute per month", nodes * p.node_hour_usd * 730, "USD", f"nodes x node_hour_usd {p.node_hour_usd} x 730 h")
    add("cost", "storage per month", arch * p.storage_gb_month_usd, "USD", f"archived GB x storage_gb_month_usd {p.storage_gb_month_usd}")
    return out
