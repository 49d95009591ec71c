"""Retraining with a gate, a canary and automatic rollback (``feedrank retrain``).

One cycle (``run_cycle``), while the server keeps serving from the registry:

1. **check** what the last cycle left running (``retrain-state.json``): a canary whose
   challenger arm has enough impressions is promoted, or withdrawn when its online CTR is
   below the champion arm's by more than ``rollback_margin``; a promoted model is compared
   with its predecessor (CTR after vs before the promotion, same length of time) and the
   registry is rolled back on the same rule;
2. **data**: events since the champion's cut-off from the event log + base dataset + live
   item adds -> one dataset folder (``retrain_data.py``); nothing new -> stop;
3. **train** a challenger warm-started from the champion (``warmstart.py``) on the new
   events, except the newest ``holdout`` share of them;
4. **evaluate** champion and challenger on that newest held-out slice (the time split's
   test side) with the evaluator passed in (``evaluation.offline.evaluate_prepared``);
5. **gate** (``gate``): refuse when ranking AUC drops by more than ``max_regression``
   or retrieval recall@100 by more than ``max_recall_regression``; the decision and both metric sets go into the bundle's
   manifest (``retrain``) and into ``retrain-log.jsonl``;
6. **register** an accepted challenger; with ``canary`` > 0 write the experiments file
   (arms ``control`` = champion, ``challenger``, both pinned versions) and leave the
   promotion to step 1 of a later cycle; otherwise promote now and monitor.

Evaluation and the A/B report live above this layer, so both come in as functions
(``evaluator``, ``ab_report``), as in ``pipeline.build.train_model``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from feedrank.config import FeedrankConfig
from feedrank.data.partitions import PartitionedLog
from feedrank.errors import NotFound
from feedrank.pipeline.artifacts import load_artifacts, save_artifacts
from feedrank.pipeline.build import prepare
from feedrank.pipeline.retrain_data import base_dataset_of, build_retrain_dataset
from feedrank.pipeline.warmstart import train_challenger
from feedrank.registry.store import ModelRegistry
from feedrank.types import Event, EventKind

STATE_FILE = "retrain-state.json"
LOG_FILE = "retrain-log.jsonl"
WORK_DIR = "retrain-work"
EXPERIMENT = "retrain-canary"

Evaluator = Callable[..., dict]           # (ModelArtifacts, Prepared, say=...) -> metrics
ABReport = Callable[[Iterable[Event], str | None], dict]   # evaluation.abreport.ab_report


@dataclass(frozen=True)
class RetrainPolicy:
    """The knobs of a retrain cycle (the CLI's flags)."""

    max_regression: float = 0.005   # allowed absolute drop of the ranker's AUC vs the champion
    max_recall_regression: float = 0.02   # ... of retrieval recall@100 (noisier: a few hundred users)
    canary: float = 0.0             # challenger's traffic share before promotion (0: promote at once)
    rollback_margin: float = 0.01   # roll back when CTR(challenger) < CTR(champion) - margin
    min_impressions: int = 2000     # per side, before a canary or a promotion is judged
    min_new_events: int = 1         # fewer new events than this: skip training
    epochs: int = 1                 # warm-start fine-tuning epochs
    holdout: float = 0.3            # newest share of the new events held out to judge both models
    experiments_file: str | None = None   # the server's serving.experiments_file (needed for canary)


@dataclass(frozen=True)
class GateDecision:
    accept: bool
    reasons: tuple[str, ...]
    champion: dict[str, float | None]
    challenger: dict[str, float | None]


@dataclass(frozen=True)
class RollbackDecision:
    rollback: bool
    judged: bool                    # False: not enough impressions yet
    reason: str
    champion_ctr: float | None
    challenger_ctr: float | None
    champion_impressions: int
    challenger_impressions: int


@dataclass(frozen=True)
class CycleResult:
    action: str                     # skipped | rejected | canary | promoted | waiting
    detail: str
    check: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    version: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------- pure decisions
GATED_METRICS = (("ranking", "auc", "n_impressions"), ("retrieval", "recall@100", "n_users"))
MIN_SAMPLE = {"ranking.auc": 1000, "retrieval.recall@100": 100}   # impressions / users in the held-out slice


def headline(metrics: dict | None) -> dict[str, float | None]:
    """The gated metrics of an evaluation (None where the model has no such stage)."""
    m = metrics or {}
    return {f"{stage}.{name}": (None if not m.get(stage) else float(m[stage][name])) for stage, name, _ in GATED_METRICS}


def sample_sizes(metrics: dict | None) -> dict[str, int]:
    """How many impressions (ranking) and users (retrieval) each gated metric stands on."""
    m = metrics or {}
    return {f"{stage}.{name}": int((m.get(stage) or {}).get(n, 0) or 0) for stage, name, n in GATED_METRICS}


def gate(champion: dict | None, challenger: dict | None, max_regression: float,
         max_recall_regression: float | None = None, min_sample: dict[str, int] | None = None) -> GateDecision:
    """Accept the challenger unless the ranker's AUC falls more than ``max_regression``
    below the champion's, retrieval recall@100 more than ``max_recall_regression`` (default:
    the same), or a gated metric is missing/NaN where the champion has one. A metric
    measured on fewer than ``min_sample`` impressions/users (default ``MIN_SAMPLE``) is
    reported but not gated: on a few dozen users recall@100 moves by 0.05 between two
    copies of one model. Pure."""
    a, b = headline(champion), headline(challenger)
    n = sample_sizes(champion)
    need = MIN_SAMPLE if min_sample is None else min_sample
    limits = {"ranking.auc": max_regression,
              "retrieval.recall@100": max_regression if max_recall_regression is None else max_recall_regression}
    reasons = []
    notes = []
    for key, va in a.items():
        vb = b.get(key)
        if va is None or va != va:
            continue
        if n[key] < need.get(key, 0):
            notes.append(f"{key} not gated: {n[key]} in the held-out slice (< {need.get(key, 0)})")
            continue
        if vb is None or vb != vb:
            reasons.append(f"{key}: challenger has none (champion {va:.4f})")
        elif vb < va - limits[key]:
            reasons.append(f"{key}: {vb:.4f} < champion {va:.4f} - {limits[key]:g}")
    return GateDecision(not reasons, tuple(reasons or ["no gated metric regressed"]) + tuple(notes), a, b)


def rollback_decision(report: dict, champion_arm: str, challenger_arm: str, margin: float,
                      min_impressions: int) -> RollbackDecision:
    """From an A/B report (``evaluation.abreport.ab_report``'s dict): roll back when both
    arms have ``min_impressions`` and CTR(challenger) < CTR(champion) - ``margin``. Pure."""
    arms = {a["arm"]: a for a in report.get("arms", [])}
    ch, cl = arms.get(champion_arm), arms.get(challenger_arm)
    n_ch = int(ch["impressions"]) if ch else 0
    n_cl = int(cl["impressions"]) if cl else 0
    r_ch = float(ch["ctr"]) if ch and n_ch else None
    r_cl = float(cl["ctr"]) if cl and n_cl else None
    if n_ch < min_impressions or n_cl < min_impressions:
        return RollbackDecision(False, False, f"waiting: {n_cl:,} challenger / {n_ch:,} champion impressions "
                                f"(need {min_impressions:,} each)", r_ch, r_cl, n_ch, n_cl)
    assert r_ch is not None and r_cl is not None
    if r_cl < r_ch - margin:
        return RollbackDecision(True, True, f"CTR {r_cl:.4f} < champion {r_ch:.4f} - {margin:g}", r_ch, r_cl, n_ch, n_cl)
    return RollbackDecision(False, True, f"CTR {r_cl:.4f} vs champion {r_ch:.4f} (margin {margin:g}): keep", r_ch, r_cl, n_ch, n_cl)


def canary_experiments(champion: int, challenger: int, share: float, tag: str) -> dict:
    """The experiments file for a canary: every user in one experiment, two pinned arms."""
    return {"experiments": [{
        "name": EXPERIMENT, "salt": f"{EXPERIMENT}-{tag}", "traffic": 1.0,
        "arms": [{"name": "control", "weight": round(1.0 - share, 6), "model_version": champion},
                 {"name": "challenger", "weight": round(share, 6), "model_version": challenger}],
    }]}


def window_arms(events: Iterable[Event], split_ts: float, window_s: float) -> Iterable[Event]:
    """Impressions relabelled by time for a before/after comparison: arm ``monitor/champion``
    in [split_ts - window_s, split_ts), ``monitor/challenger`` in [split_ts, split_ts + window_s);
    other impressions dropped; clicks and dwell pass through (they join by request)."""
    for ev in events:
        if ev.kind != EventKind.IMPRESSION:
            yield ev
        elif split_ts - window_s <= ev.ts < split_ts:
            yield replace(ev, arm="monitor/champion")
        elif split_ts <= ev.ts < split_ts + window_s:
            yield replace(ev, arm="monitor/challenger")


# ---------------------------------------------------------------------- state and logs
def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def read_state(registry: ModelRegistry) -> dict[str, Any]:
    p = registry.root / STATE_FILE
    return json.loads(p.read_text()) if p.exists() else {"phase": "idle"}


def write_state(registry: ModelRegistry, state: dict[str, Any]) -> None:
    _write_json(registry.root / STATE_FILE, state)


def append_log(registry: ModelRegistry, entry: dict[str, Any]) -> None:
    with open(registry.root / LOG_FILE, "a") as f:
        f.write(json.dumps({"ts": time.time(), **entry}, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_log(registry: ModelRegistry) -> list[dict[str, Any]]:
    p = registry.root / LOG_FILE
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def write_experiments(path: str | Path, content: dict | None) -> None:
    """Replace the experiments file atomically (None: no experiments)."""
    import yaml

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(yaml.safe_dump(content or {"experiments": []}, sort_keys=False))
    os.replace(tmp, p)


# ---------------------------------------------------------------------- the cycle
def check_online(registry: ModelRegistry, events_dir: str | Path, policy: RetrainPolicy, ab_report: ABReport,
                 say: Callable[[str], None] = print, now: float | None = None) -> dict[str, Any] | None:
    """Judge what the last cycle left running (canary or fresh promotion). Returns what
    was decided (None when nothing was pending)."""
    state = read_state(registry)
    phase = state.get("phase", "idle")
    if phase not in ("canary", "monitor"):
        return None
    now = time.time() if now is None else now
    with PartitionedLog(events_dir) as log:  # every worker partition, each event id once
        events = list(log.read_all())
    if phase == "canary":  # only this canary's impressions: the experiment name is reused by later canaries
        since = float(state.get("since", 0.0))
        report = ab_report((e for e in events if e.kind != EventKind.IMPRESSION or e.ts >= since), EXPERIMENT)
        d = rollback_decision(report, f"{EXPERIMENT}/control", f"{EXPERIMENT}/challenger", policy.rollback_margin,
                              policy.min_impressions)
    else:
        window = max(now - float(state["since"]), 1.0)
        report = ab_report(window_arms(events, float(state["since"]), window), "monitor")
        d = rollback_decision(report, "monitor/champion", "monitor/challenger", policy.rollback_margin, policy.min_impressions)
    out: dict[str, Any] = {"phase": phase, "champion": state.get("champion"), "challenger": state.get("challenger"),
                           **asdict(d)}
    if not d.judged:
        say(f"{phase} v{state.get('challenger')}: {d.reason}")
        out["action"] = "waiting"
        return out
    challenger, champion = int(state["challenger"]), int(state["champion"])
    if phase == "canary":
        if policy.experiments_file:
            write_experiments(policy.experiments_file, None)
        if d.rollback:
            out["action"] = "canary_rolled_back"
            write_state(registry, {"phase": "idle", "rejected": challenger})
        else:
            registry.promote(challenger)
            out["action"] = "promoted_after_canary"
            write_state(registry, {"phase": "monitor", "champion": champion, "challenger": challenger, "since": now})
    elif d.rollback:
        if registry.current() == challenger:
            registry.rollback()
        out["action"] = "rolled_back"
        write_state(registry, {"phase": "idle", "rejected": challenger})
    else:
        out["action"] = "kept"
        write_state(registry, {"phase": "idle"})
    say(f"{phase} v{challenger} vs v{champion}: {d.reason} -> {out['action']}")
    append_log(registry, {"event": "online_check", **out})
    return out


def run_cycle(registry_dir: str | Path, events_dir: str | Path, cfg_override: Callable[[FeedrankConfig], FeedrankConfig] | None,
              evaluator: Evaluator, ab_report: ABReport, policy: RetrainPolicy, base_data: str | None = None,
              show_progress: bool = True, say: Callable[[str], None] = print,
              label_noise: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None) -> CycleResult:
    """One retrain cycle (module docstring). ``cfg_override`` adjusts the champion's config
    for training (e.g. thread count); ``label_noise`` breaks the challenger on purpose (drills)."""
    t0 = time.perf_counter()
    registry = ModelRegistry(registry_dir, create=False)
    secs: dict[str, float] = {}
    check = check_online(registry, events_dir, policy, ab_report, say)
    if read_state(registry).get("phase") == "canary":
        return CycleResult("waiting", "a canary is still running", check, seconds={"total": time.perf_counter() - t0})
    cur = registry.current()
    if cur is None:
        raise NotFound(f"registry {registry.root} has no current version; publish and promote a first model")
    champion = load_artifacts(registry.path(cur))
    cfg = champion.cfg if cfg_override is None else cfg_override(champion.cfg)
    base = base_data or base_dataset_of(champion)
    if base is not None and not Path(base).is_dir():
        say(f"base dataset {base} not found: training on the event log alone")
        base = None
    work = registry.root / WORK_DIR
    work.mkdir(exist_ok=True)
    t = time.perf_counter()
    data = build_retrain_dataset(base, events_dir, champion, work / "dataset", say=say)
    secs["data"] = time.perf_counter() - t
    if data.n_new_events < policy.min_new_events:
        detail = f"{data.n_new_events} new events since v{cur} (need {policy.min_new_events})"
        say(f"nothing to do: {detail}")
        return CycleResult("skipped", detail, check, seconds={**secs, "total": time.perf_counter() - t0})
    # the held-out slice is the newest ``holdout`` of the *new* events: the challenger
    # learns from the older new events, and both models are judged on what came last
    frac = float(np.clip(policy.holdout * data.n_new_events / max(data.n_events, 1), 1e-3, 0.5))
    cfg = dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, test_fraction=frac))
    t = time.perf_counter()
    prep = prepare(data.path, cfg, vocabs=champion.vocabs, say=say)
    secs["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    challenger = train_challenger(champion, prep, cfg, policy.epochs, show_progress, say, label_noise,
                                  since_ts=data.cutoff_ts)
    secs["train"] = time.perf_counter() - t
    t = time.perf_counter()
    champ_eval = evaluate_on(champion, prep, evaluator, say)
    chall_eval = evaluator(challenger, prep, say=say)
    secs["evaluate"] = time.perf_counter() - t
    decision = gate(champ_eval, chall_eval, policy.max_regression, policy.max_recall_regression)
    say(f"gate: {'ACCEPT' if decision.accept else 'REFUSE'} challenger ({'; '.join(decision.reasons)}) "
        f"champion {decision.champion} challenger {decision.challenger}")
    record = {"champion_version": cur, "data": data.to_dict(), "gate": asdict(decision), "policy": asdict(policy),
              "seconds": secs}
    challenger.info["metrics"] = chall_eval
    challenger.info["retrain"] = {**record, "base_data": base, "champion_metrics_on_this_split": champ_eval}
    out_dir = work / "challenger"
    t = time.perf_counter()
    save_artifacts(challenger, out_dir)
    secs["save"] = time.perf_counter() - t
    if not decision.accept:
        append_log(registry, {"event": "gate", "action": "rejected", **record, "bundle": challenger.version})
        return CycleResult("rejected", "; ".join(decision.reasons), check, asdict(decision),
                           seconds={**secs, "total": time.perf_counter() - t0})
    version = registry.publish(out_dir)
    if policy.canary > 0:
        if not policy.experiments_file:
            raise NotFound("--canary needs the server's experiments file (--experiments FILE, serve with "
                           "serving.experiments_file=FILE)")
        write_experiments(policy.experiments_file, canary_experiments(cur, version, policy.canary, str(version)))
        write_state(registry, {"phase": "canary", "champion": cur, "challenger": version, "since": time.time()})
        action = "canary"
        say(f"registered v{version}; canary: {policy.canary:.0%} of users via {policy.experiments_file}")
    else:
        registry.promote(version)
        write_state(registry, {"phase": "monitor", "champion": cur, "challenger": version, "since": time.time()})
        action = "promoted"
        say(f"registered and promoted v{version} (was v{cur}); watching its online CTR for a rollback")
    secs["total"] = time.perf_counter() - t0
    append_log(registry, {"event": "gate", "action": action, "version": version, **record})
    return CycleResult(action, "; ".join(decision.reasons), check, asdict(decision), version, secs)


def evaluate_on(art, prep, evaluator: Evaluator, say: Callable[[str], None] = print) -> dict:
    """Evaluate a model on ``prep`` whose catalogue may have grown since it was trained:
    item vectors and the index are recomputed with the model's own towers."""
    if len(prep.catalog) != len(art.catalog) or not np.array_equal(prep.catalog.item_ids, art.catalog.item_ids):
        art.use_catalog(prep.catalog, say)
    return evaluator(art, prep, say=say)
