"""Does serving grow the cyclic GC's work over time? (serving/heap.py freezes what a model
load leaves; what requests add afterwards is collected as usual.)

Loads a bundle as serving does, serves warm-up feeds, freezes the heap, then serves
``--requests`` feeds (90% known users, 10% new ones, each feed's 20 impressions observed)
and prints, every 5,000 requests, the objects the collector tracks and every full
(generation 2) collection with its pause.

    python benchmarks/gc_growth.py var/bench/serve/u1000000-i1000000-d5/model --requests 40000
    # bytes still allocated per new user served (tracemalloc; all-new users), by source file
    python benchmarks/gc_growth.py var/bench/serve/u20000-i5000-d14/model --requests 3000 --new-users-memory
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model bundle directory")
    ap.add_argument("--requests", type=int, default=40_000)
    ap.add_argument("--new-users-memory", action="store_true",
                    help="instead: serve --requests feeds to new users and print the bytes retained per user")
    args = ap.parse_args(argv)
    from feedrank.serving.factory import build_service
    from feedrank.serving.heap import freeze_loaded
    from feedrank.types import Event, EventKind, FeedRequest

    _app, _log, rec, _cfg = build_service(args.model, tempfile.mkdtemp(prefix="gc-growth-"))
    known = rec.art.snapshot.user_ids
    rng = np.random.default_rng(1)

    def one(user: str, i: int) -> None:
        resp = rec.recommend(FeedRequest(user_id=user, k=20, deadline_ms=10_000.0))
        now = time.time()
        rec.observe([Event(event_id=f"r{i}:{it.rank}", ts=now, user_id=user, item_id=it.item_id,
                           kind=EventKind.IMPRESSION, position=it.rank - 1, request_id=f"r{i}",
                           propensity=it.propensity, arm=resp.arm) for it in resp.items])

    for i in range(200):
        one(f"warm{i}", i)
    if args.new_users_memory:
        import tracemalloc

        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(args.requests):
            one(f"newuser{i}", i)
        gc.collect()
        per = (tracemalloc.get_traced_memory()[0] - base) / max(args.requests, 1)
        print(f"bytes retained per new user: {per:.0f}")
        for st in tracemalloc.take_snapshot().statistics("filename")[:6]:
            print(f"  {st}")
        return 0
    print(freeze_loaded("gc_growth"), flush=True)
    full: list[tuple[float, int]] = []
    t0 = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            t0[0] = time.perf_counter()
        else:
            full.append((1000.0 * (time.perf_counter() - t0[0]), len(gc.get_objects(2))))

    gc.callbacks.append(on_gc)
    start = time.perf_counter()
    users = [str(known[j]) if rng.random() < 0.9 else f"new-{j}" for j in rng.integers(0, len(known), args.requests)]
    for i, user in enumerate(users):
        one(user, i)
        if i % 5000 == 4999 or i == len(users) - 1:
            last = f"last {full[-1][0]:.1f} ms over {full[-1][1]} objects" if full else "none"
            print(f"{i + 1} requests, {time.perf_counter() - start:.0f} s: tracked objects {len(gc.get_objects())}, "
                  f"full collections {len(full)} ({last})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
