"""What the planner knows from measurement: figures read from benchmarks/results/*.json,
each kept with the file it came from and the machine it was measured on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedrank.errors import CorruptFile


@dataclass(frozen=True)
class Figure:
    value: float
    source: str        # "benchmarks/results/feed.json: in_process.stages_ms.rank.p50"
    machine: str       # "2 cores, <cpu model>"


def _machine(doc: dict[str, Any]) -> str:
    m = doc.get("machine") or {}
    return f"{m.get('cores', '?')} cores, {m.get('cpu', 'unknown cpu')}, {m.get('memory_gib', '?')} GiB"


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, (int, float)) else "an unrecorded number of"


def _load(results: Path, name: str) -> dict[str, Any] | None:
    p = results / f"{name}.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFile(f"{p}: not valid JSON: {exc}") from exc


def _scale_training(results: Path) -> Figure | None:
    """Two-tower examples/s on one node from ``scale.json``: the largest world's run with
    the most processes (one thread each: a 2-process run is one 2-core node)."""
    scale = _load(results, "scale")
    if not scale:
        return None
    best = None
    for i, pt in enumerate(scale.get("points") or []):
        runs = {int(k): v for k, v in (pt.get("training") or {}).items() if k.isdigit() and isinstance(v, dict)
                and v.get("examples_per_s")}
        if not runs:
            continue
        nproc = max(runs)
        key = (pt.get("items", 0), nproc)
        if best is None or key > best[0]:
            best = (key, i, nproc, runs[nproc], pt)
    if best is None:
        return None
    _, i, nproc, run, pt = best
    speed = (pt.get("training") or {}).get("speedup_2_vs_1")
    return Figure(float(run["examples_per_s"]),
                  f"{results}/scale.json: points[{i}].training.{nproc}.examples_per_s ({nproc} processes x 1 thread, "
                  f"{_count(pt.get('items'))} items; measured 1->2 process speed-up {speed})", _machine(scale))


@dataclass
class Measured:
    """Every measured input the plan can use; missing ones are None (the plan says so)."""

    feed_stage_ms: dict[str, Figure]            # per-stage p50 in process, at `feed_candidates`
    feed_candidates: Figure | None
    node_rps: Figure | None                      # highest offered rate held within the SLO, one serving process
    node_p99_ms: Figure | None
    ingest_events_per_s: Figure | None           # durable events/s into the embedded log, one node
    train_examples_per_s: dict[str, Figure]      # "two_tower", "ranker": examples/s on one node
    missing: list[str]

    @classmethod
    def read(cls, results: str | Path, slo_ms: float, model_dir: str | Path | None = None) -> Measured:
        results = Path(results)
        missing: list[str] = []
        stages: dict[str, Figure] = {}
        cand = None
        feed = _load(results, "feed")
        if feed:
            src = f"{results}/feed.json"
            for name, st in feed["in_process"]["stages_ms"].items():
                stages[name] = Figure(float(st["p50"]), f"{src}: in_process.stages_ms.{name}.p50 "
                                      f"({_count(feed.get('n_items'))} items)", _machine(feed))
            cand = Figure(float(feed["candidates"]), f"{src}: candidates", _machine(feed))
        else:
            missing.append("per-stage latency: run `feedrank bench feed --model MODEL`")
        node_rps = node_p99 = None
        serve = _load(results, "serve")
        if serve:
            ok = [r for r in serve["rates"] if r.get("p99_ms") is not None and r["p99_ms"] <= slo_ms
                  and (r.get("tier_share") or {}).get("full", 0) >= 0.99 and not r.get("non_2xx")]
            if ok:
                best = max(ok, key=lambda r: r["achieved_rps"])
                i = serve["rates"].index(best)
                node_rps = Figure(float(best["achieved_rps"]), f"{results}/serve.json: rates[{i}].achieved_rps "
                                  f"(p99 {best['p99_ms']} ms <= SLO {slo_ms} ms, full tier >= 99%; measured with "
                                  f"{_count(serve.get('items'))} items, {_count(serve.get('users'))} users)", _machine(serve))
                node_p99 = Figure(float(best["p99_ms"]), f"{results}/serve.json: rates[{i}].p99_ms", _machine(serve))
            else:
                missing.append(f"no measured rate in serve.json held p99 <= {slo_ms} ms with >= 99% full tier")
        else:
            missing.append("per-node throughput: run `feedrank bench serve`")
        ingest_fig = None
        ingest = _load(results, "ingest")
        if ingest and ingest.get("embedded"):
            best = max(ingest["embedded"], key=lambda r: r["events_per_s"]["median"])
            i = ingest["embedded"].index(best)
            ingest_fig = Figure(float(best["events_per_s"]["median"]),
                                f"{results}/ingest.json: embedded[{i}].events_per_s.median "
                                f"({best['writers']} writers, batch {best['batch']})", _machine(ingest))
        else:
            missing.append("event ingest rate: run `feedrank bench ingest`")
        train: dict[str, Figure] = {}
        if model_dir is not None:
            mpath = Path(model_dir) / "manifest.json"
            if mpath.exists():
                man = json.loads(mpath.read_text())
                reports = man.get("train_reports") or {}
                for name in ("two_tower", "ranker"):
                    r = reports.get(name)
                    if r and r.get("seconds"):
                        epochs = float(r.get("epochs", 1))
                        train[name] = Figure(float(r["examples"]) * epochs / float(r["seconds"]),
                                             f"{mpath}: train_reports.{name} (examples x epochs / seconds)",
                                             "the machine that trained this model")
        if "two_tower" not in train:
            fig = _scale_training(results)
            if fig is not None:
                train["two_tower"] = fig
        if not train:
            missing.append("training examples/s: pass --model MODEL_DIR (its train reports) or run `feedrank bench scale`")
        return cls(stages, cand, node_rps, node_p99, ingest_fig, train, missing)
