"""Retraining time on N new events (issue #6 target: 1M new events in <= 10 min on 2 cores).

    out = bench_retrain(Path("var/bench-retrain"), users=20_000, items=5_000, days=14, new_events=1_000_000)

A synthetic world is split in time: everything before the cut is the base dataset the
champion is trained on (full training, published and promoted in a registry); the newest
``new_events`` events go into an event log, as a live server would have written them.
Then one ``run_cycle`` runs (data -> warm-started challenger -> evaluation of both -> gate
-> publish) and its stage times are reported.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

from feedrank.data.dataset import DatasetWriter, load_dataset
from feedrank.data.eventlog import EventLog
from feedrank.data.events import event_from_dict


def split_world(world_dir: str | Path, base_out: str | Path, events_dir: str | Path, n_new: int,
                batch: int = 50_000) -> dict[str, Any]:
    """Base dataset = all but the newest ``n_new`` events (cut at a request boundary);
    the rest is appended to the event log at ``events_dir``. Returns counts and the cut."""
    ds = load_dataset(world_dir, validate=False)
    ev = ds.events.sort_by("ts")
    n = ev.num_rows
    cut = max(1, n - int(n_new))
    req = ev.column("request_id").to_numpy(zero_copy_only=False)
    while 0 < cut < n and req[cut] is not None and req[cut] == req[cut - 1]:
        cut -= 1  # back to a request boundary: the log gets at least ``n_new`` events
    with DatasetWriter(base_out, source=ds.meta.source, extra={"split_from": str(world_dir)}) as w:
        w.write_items(ds.items)
        if ds.users is not None:
            w.write_users(ds.users)
        w.append_events(ev.slice(0, cut))
    new = ev.slice(cut).to_pylist()
    log = EventLog(events_dir)
    try:
        for a in range(0, len(new), batch):
            rows = []
            for r in new[a:a + batch]:
                r = dict(r)
                r["ts"] = r["ts"].timestamp()
                rows.append(event_from_dict(r))
            log.append(rows)
    finally:
        log.close()
    return {"base_events": cut, "log_events": len(new), "cut_ts": float(ev.column("ts")[cut].value / 1000.0) if cut < n else None}


def bench_retrain(work: Path, users: int, items: int, days: int, new_events: int, activity: float = 1.0, seed: int = 0,
                  overrides: tuple[str, ...] = (), say: Callable[[str], None] = print, show_progress: bool = True) -> dict[str, Any]:
    """Build the scenario under ``work`` and time one retrain cycle. Returns the report."""
    from feedrank.config import load_config
    from feedrank.data.synth import WorldConfig, generate_world
    from feedrank.evaluation.abreport import ab_report
    from feedrank.evaluation.offline import evaluate_prepared
    from feedrank.pipeline.build import train_model
    from feedrank.pipeline.retrain import RetrainPolicy, run_cycle
    from feedrank.registry.store import ModelRegistry
    import shutil

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    start = float(int(time.time() // 3600 * 3600) - days * 86400)
    t = time.perf_counter()
    generate_world(work / "world", WorldConfig(n_users=users, n_items=items, n_days=days, seed=seed, start=start,
                                               activity_mean=activity), progress=show_progress)
    split = split_world(work / "world", work / "base", work / "registry" / "events", new_events)
    say(f"scenario: base {split['base_events']:,} events, log {split['log_events']:,} new events ({time.perf_counter() - t:.0f}s)")
    cfg = load_config(None, list(overrides))
    t = time.perf_counter()
    train_model(work / "base", work / "champion", cfg, show_progress=show_progress, evaluator=evaluate_prepared, say=say)
    champion_s = time.perf_counter() - t
    reg = ModelRegistry(work / "registry")
    reg.publish(work / "champion", promote=True)
    t = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    res = run_cycle(work / "registry", work / "registry" / "events", None, evaluate_prepared, ab_report,
                    RetrainPolicy(), None, show_progress=show_progress, say=say)
    total = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # CPU time: on a shared machine wall time is not
    return {
        "scenario": {"users": users, "items": items, "days": days, "activity": activity, **split},
        "champion_full_training_s": round(champion_s, 1),
        "retrain": {"action": res.action, "detail": res.detail, "version": res.version,
                    "stages_s": {k: round(v, 1) for k, v in res.seconds.items()}, "total_s": round(total, 1),
                    "cpu_s": round(cpu_s, 1), "load_average_at_end": os.getloadavg()[0],
                    "gate": res.gate},
        "target": {"new_events": 1_000_000, "max_s": 600, "met": bool(split["log_events"] >= 1_000_000 and total <= 600)},
        "threads": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


