"""CPU per event of the live consumer (issue #5): ``LogConsumer.poll()`` end to end, read
(``PartitionedLog``) + apply (``RealtimeFeatures``) + publish (``StorePublisher`` into a
memory:// store, invalidating a bound catalogue's cached rows), wired as
``features.live.LiveFeatures.start`` wires them in a serving worker.

The events folder is serving-like: two worker partitions ``w0``/``w1`` written with the
real ``EventLog`` writer (worker 0's own partition is read through its writer, as in a
worker), 20 impressions per feed request (event ids ``<request>:<rank>``) plus clicks on
~3% of the impressions, item ids from a 1M-item catalogue (``i123456``), user ids
``u123``. By default the consumer tails the folder: ``--per-poll`` requests are appended
(not timed) between two timed ``poll()`` calls, as a worker serving 300 rps with a 0.1 s
poll interval sees them; ``--per-poll 0`` writes everything first and times one catch-up.

As in a serving worker (serving/heap.py), what is loaded before the timed polls (the
catalogue binding) is moved out of the cyclic GC's reach with ``gc.freeze``.
The figure is process CPU seconds (``time.process_time``) per event read, best of
``--rounds`` (each round a fresh folder, consumer and store).

Examples:

    .venv/bin/python benchmarks/consumer_cpu.py                      # ~100k events, tailing
    .venv/bin/python benchmarks/consumer_cpu.py --events 20000 --rounds 1
    .venv/bin/python benchmarks/consumer_cpu.py --per-poll 0 --json  # one catch-up poll
    .venv/bin/python benchmarks/consumer_cpu.py --consumer-yield     # as serving.consumer_yield=true
    .venv/bin/python benchmarks/consumer_cpu.py --save                # + benchmarks/results/consumer_cpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from feedrank.data.eventlog import EventLog
from feedrank.data.partitions import PartitionedLog
from feedrank.features.consumer import LogConsumer
from feedrank.features.live import CONSUMER_BATCH, LiveFeatures
from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.store.memory import MemoryStore
from feedrank.pipeline.artifacts import OnlineSnapshot
from feedrank.types import Event, EventKind


def make_requests(n_events: int, n_items: int, n_users: int, click_rate: float, seed: int) -> list[tuple[str, list[Event]]]:
    """(partition, events of one feed request) in serving order, alternating workers."""
    rng = random.Random(seed)
    t0 = time.time() - 1800.0
    out: list[tuple[str, list[Event]]] = []
    n, r = 0, 0
    while n < n_events:
        part = f"w{r % 2}"
        rid = f"{rng.getrandbits(64):016x}"
        ts = t0 + r * (1.0 / 300.0)  # 300 rps
        user = f"u{rng.randrange(n_users)}"
        evs = [Event(f"{rid}:{k + 1}", ts, user, f"i{rng.randrange(n_items)}", EventKind.IMPRESSION, position=k,
                     request_id=rid, propensity=round(rng.uniform(0.05, 1.0), 4)) for k in range(20)]
        for ev in list(evs):
            if rng.random() < click_rate:
                evs.append(Event(f"c{rng.getrandbits(64):016x}", ts + rng.uniform(0.5, 5.0), user, ev.item_id,
                                 EventKind.CLICK, position=ev.position, request_id=rid))
        out.append((part, evs))
        n += len(evs)
        r += 1
    return out


def build_live(snapshot: OnlineSnapshot, ids: list[str], cats: list[str]) -> LiveFeatures:
    live = LiveFeatures(MemoryStore(), RealtimeFeatures())
    binding = live.bind(snapshot, ids, cats)
    binding.cached_at[:] = 0.0  # every row cached: publishing invalidates as in serving
    return live


def run_round(root: Path, requests: list[tuple[str, list[Event]]], per_poll: int, live: LiveFeatures,
              consumer_yield: bool) -> tuple[int, float]:
    shutil.rmtree(root, ignore_errors=True)
    logs = {p: EventLog(root / p) for p in ("w0", "w1")}
    source = PartitionedLog(root, own={"w0": logs["w0"]})
    # as LiveFeatures.start: 1,024-record batches, or with serving.consumer_yield=true the
    # serving loop's yield flag (never busy here) and CONSUMER_BATCH-record batches
    consumer = LogConsumer(source, live.publisher, None, batch_size=CONSUMER_BATCH if consumer_yield else 1024,
                           yield_to=(lambda: False) if consumer_yield else None, commit_every_s=1e9, name="bench")
    step = per_poll if per_poll > 0 else len(requests)
    n, cpu = 0, 0.0
    try:
        for k in range(0, len(requests), step):
            batch: dict[str, list[Event]] = {"w0": [], "w1": []}
            for part, evs in requests[k:k + step]:
                batch[part].extend(evs)
            for part, evs in batch.items():
                if evs:
                    logs[part].append(evs)
            t0 = time.process_time()
            got = consumer.poll()
            while got:
                n += got
                got = consumer.poll()
            cpu += time.process_time() - t0
    finally:
        source.close()
        for lg in logs.values():
            lg.close()
    return n, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="events to write (default 100000)")
    ap.add_argument("--items", type=int, default=1_000_000, help="catalogue size (default 1000000)")
    ap.add_argument("--users", type=int, default=100_000, help="distinct users (default 100000)")
    ap.add_argument("--click-rate", type=float, default=0.03, help="clicks per impression (default 0.03)")
    ap.add_argument("--per-poll", type=int, default=30,
                    help="requests appended between two polls (default 30: 300 rps, 0.1 s poll); 0: one catch-up")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the best is reported (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir, removed)")
    ap.add_argument("--consumer-yield", action="store_true",
                    help="wire it as serving.consumer_yield=true does (128-record batches, 64-record slices)")
    ap.add_argument("--no-freeze", action="store_true",
                    help="leave the catalogue binding to the cyclic GC (serving freezes it: serving/heap.py)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--save", action="store_true",
                    help="also write the result to $FEEDRANK_BENCH_RESULTS/consumer_cpu.json (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.events < 1 or args.items < 1 or args.users < 1 or args.rounds < 1 or args.per_poll < 0:
        ap.error("--events, --items, --users and --rounds must be >= 1, --per-poll >= 0")
    if not 0.0 <= args.click_rate <= 1.0:
        ap.error(f"--click-rate must be in [0, 1], got {args.click_rate}")

    requests = make_requests(args.events, args.items, args.users, args.click_rate, args.seed)
    ids = [f"i{k}" for k in range(args.items)]
    cats = [f"c{k % 20}" for k in range(args.items)]
    snapshot = OnlineSnapshot(user_ids=np.array(["u0"]), histories=np.array([[-1]]), user_clicks=np.array([0]),
                              item_impressions=np.zeros(args.items), item_clicks=np.zeros(args.items))
    tmp = Path(tempfile.mkdtemp(prefix="consumer-cpu-")) if args.dir is None else args.dir
    per_event: list[float] = []
    try:
        for r in range(args.rounds):
            live = build_live(snapshot, ids, cats)
            if not args.no_freeze:  # as serving/heap.py freeze_loaded does after a model is loaded
                gc.unfreeze()
                gc.collect()
                gc.freeze()
            n, cpu = run_round(tmp / "events", requests, args.per_poll, live, args.consumer_yield)
            del live
            per_event.append(1e6 * cpu / max(n, 1))
            if not args.json:
                print(f"round {r}: {n} events, {cpu:.3f} s CPU, {per_event[-1]:.2f} us/event", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    out = {"bench": "consumer_cpu", "events": n, "per_poll": args.per_poll, "items": args.items,
           "consumer_yield": args.consumer_yield,
           "us_per_event_best": round(min(per_event), 3), "us_per_event": [round(x, 3) for x in per_event],
           "load_avg": os.getloadavg()[0]}
    print(json.dumps(out) if args.json else f"best: {out['us_per_event_best']:.2f} us/event "
          f"(rounds {out['us_per_event']}; load {out['load_avg']:.2f})")
    if args.save:
        out["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        dest = Path(os.environ.get("FEEDRANK_BENCH_RESULTS", "benchmarks/results")) / "consumer_cpu.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
