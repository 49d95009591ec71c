"""Ingest benchmark: durable events/s (embedded log and HTTP), counter lag, crash test.

    feedrank bench ingest --json
    feedrank bench ingest --model var/demo/full/model --kills 100 --json

Parts (each bounded in count and time; load goes to 127.0.0.1 only):

* ``embedded``: ``EventLog.append`` of pre-built events in batches (one fsync per batch,
  or fewer with concurrent writers sharing a group commit), on a fresh log per repeat,
  in ``--dir`` (a real disk: fsync on tmpfs would be free). Best, median, min per setting.
* ``http``: a ``feedrank serve`` subprocess on a free local port; client threads POST
  batches to ``/v1/events`` (the 202 means fsync'd); accepted events/s. Needs ``--model``.
* ``counter_lag``: a producer appends at a fixed rate; a ``LogConsumer`` thread tails the
  log into ``RealtimeFeatures``; lag = visible in the counters - append submitted (s).
* ``server_crash`` (with ``--model``): ``feedrank serve`` subprocesses are SIGKILLed
  ``--server-kills`` times while client threads POST /v1/events; a request that failed
  is re-sent (same event ids) to the next server; afterwards every event that got a 202
  must be in the log exactly once.
* ``http_counter_lag`` (with ``--model``, ``--lag-seconds``): POST /v1/events to a
  ``feedrank serve`` subprocess whose online store is a private redis-server; lag = the
  clicks visible in the store - the 202.
* ``feature_reads``: the request path's live-feature reads (500 candidates, validated,
  under the time budget) per store backend; Redis on a private redis-server.
* ``crash``: a writer subprocess appends batches and reports each acknowledged batch; it
  is killed with SIGKILL ``--kills`` times at random moments and restarted, re-sending
  from its last acknowledged event (so written-but-unacknowledged events come again). The
  log is then read: every acknowledged event must be there exactly once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from feedrank.bench.ingest_local import (
    Say,
    bench_consumer,
    bench_counter_lag,
    bench_crash,
    bench_embedded,
    crash_writer,
)
from feedrank.bench.ingest_server import bench_feature_reads, bench_http, bench_http_counter_lag, bench_server_crash

__all__ = ["run_ingest_bench", "bench_embedded", "bench_counter_lag", "bench_consumer", "bench_crash", "crash_writer",
           "bench_http", "bench_http_counter_lag", "bench_server_crash", "bench_feature_reads"]


# ---------------------------------------------------------------------- all together


def run_ingest_bench(work: Path, *, events: int = 200_000, batches: tuple[int, ...] = (100, 1000), writers: tuple[int, ...] = (1, 4),
                     repeats: int = 3, model: Path | None = None, http_requests: int = 2000, http_seconds: float = 20.0,
                     lag_rate: float = 5000.0, lag_seconds: float = 10.0, kills: int = 100, crash_seconds: float = 120.0,
                     server_kills: int = 100, server_crash_seconds: float = 1800.0, feature_reads: bool = True,
                     say: Say = print) -> dict[str, Any]:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"cores": os.cpu_count(), "work_dir": str(work)}
    emb = []
    for b in batches:
        for w in writers:
            r = bench_embedded(work, events, b, w, repeats)
            say(f"embedded log: batch {b}, {w} writer(s): best {r['events_per_s']['best']:,.0f} events/s "
                f"(median {r['events_per_s']['median']:,.0f}, min {r['events_per_s']['min']:,.0f})")
            emb.append(r)
    out["embedded"] = emb
    if model is not None:
        out["http"] = []
        for b in (100, 1000):
            try:
                r = bench_http(work, Path(model), b, clients=4, seconds=http_seconds, say=say,
                               max_requests=max(1, http_requests if b == 100 else http_requests // 10))
            except RuntimeError as exc:  # e.g. the bundle no longer loads: report it, measure the rest
                say(f"http: batch {b}: FAILED: {exc}")
                out["http"].append({"batch": b, "error": str(exc)[-1500:]})
                continue
            say(f"http: batch {b}, 4 clients: {r['events_per_s']:,.0f} accepted events/s, request p99 {r['request_ms'].get('p99')} ms")
            out["http"].append(r)
    else:
        out["http"] = {"skipped": "no --model given (the server needs a model bundle)"}
    out["consumer"] = bench_consumer(work, min(events, 200_000), repeats)
    say(f"consumer catch-up: best {out['consumer']['consume_events_per_s']['best']:,.0f} events/s "
        f"(apply alone {out['consumer']['apply_only_events_per_s']['best']:,.0f})")
    if lag_seconds > 0:
        out["counter_lag"] = bench_counter_lag(work, lag_rate, lag_seconds)
        say(f"counter lag at {out['counter_lag']['rate_achieved']:,.0f} events/s: p99 {out['counter_lag']['lag_s'].get('p99')} s")
    if kills > 0:
        out["crash"] = bench_crash(work, kills, crash_seconds, say=say)
        c = out["crash"]
        say(f"crash test: {c['kills']} SIGKILLs, {c['acknowledged']:,} acknowledged, {c['acknowledged_lost']} lost, "
            f"{c['duplicates']} duplicated")
    if feature_reads:
        out["feature_reads"] = bench_feature_reads(work, say=say)
    if model is not None and lag_seconds > 0:
        out["http_counter_lag"] = bench_http_counter_lag(work, Path(model), seconds=lag_seconds, say=say)
        lag = out["http_counter_lag"].get("lag_s", {})
        say(f"counter lag through `feedrank serve` + Redis store: p50 {lag.get('p50')} s, p99 {lag.get('p99')} s")
    if model is not None and server_kills > 0:
        out["server_crash"] = bench_server_crash(work, Path(model), server_kills, server_crash_seconds, say=say)
        c = out["server_crash"]
        say(f"server crash test: {c['kills']} SIGKILLs of `feedrank serve`, {c['acknowledged']:,} events acknowledged "
            f"(202), {c['acknowledged_lost']} lost, {c['duplicates']} duplicated")
    best = max((r["events_per_s"]["best"] for r in emb), default=0.0)
    out["targets"] = {
        "embedded_50k_events_per_s": best >= 50_000,
        "counter_lag_p99_le_5s": bool(out.get("counter_lag", {}).get("lag_s", {}).get("p99", float("inf")) <= 5.0),
        "zero_acknowledged_lost": bool(out.get("crash", {}).get("acknowledged_lost", 1) == 0
                                       and out.get("crash", {}).get("duplicates", 1) == 0),
        "server_kills_zero_acknowledged_lost": bool(out.get("server_crash", {}).get("acknowledged_lost", 1) == 0
                                                    and out.get("server_crash", {}).get("duplicates", 1) == 0
                                                    and out.get("server_crash", {}).get("acknowledged", 0) > 0),
    }
    return out
