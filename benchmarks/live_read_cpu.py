"""CPU of a request's live-feature reads: the node consumer's mirror against a worker's own
``memory://`` store (benchmarks/README.md, round 9).

    python benchmarks/live_read_cpu.py                      # 1M catalogue, 600 rows per read
    python benchmarks/live_read_cpu.py --items 200000 --rows 300 --passes 9

Publishes the same events (``--events`` impressions and clicks of ``--users`` users over
the first fifth of the catalogue) through a ``StorePublisher`` into a mirror
(features/mirror.py) and into a ``MemoryStore``, binds a ``LiveFeatures`` to each, then
times ``read_rows`` (``--rows`` random catalogue rows per call) and ``read_user`` in
``--passes`` interleaved passes of 200 calls each (the first is a warm-up: it fills the
memory store's 60 s row cache, which the later passes hit). Prints min and median
microseconds per call; ``--json`` for one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from feedrank.data.events import Event, EventKind
from feedrank.features.live import LiveFeatures
from feedrank.features.live_io import StorePublisher, window_fields
from feedrank.features.mirror import MirrorWriter
from feedrank.features.mirror_reader import MirrorStore
from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.store.memory import MemoryStore

WINDOWS = (300, 3600, 86400)


class _Snapshot:
    def __init__(self, n: int) -> None:
        self.user_ids, self.user_clicks, self.histories = np.asarray(["u0"]), np.asarray([1]), np.asarray([[0]])
        self.item_impressions, self.item_clicks = np.full(n, 10.0), np.full(n, 1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--rows", type=int, default=600, help="candidate rows per read_rows call")
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    n = args.items
    ids = [f"i{k}" for k in range(n)]
    cats = [f"c{k % 30}" for k in range(n)]
    cat_of = dict(zip(ids, cats)).get
    rng = np.random.default_rng(0)
    now = time.time()
    events = [Event(f"e{k}", now - 100 + k * 0.003, f"u{int(rng.integers(0, args.users))}",
                    ids[int(rng.integers(0, max(1, n // 5)))], EventKind.CLICK if k % 10 == 0 else EventKind.IMPRESSION)
              for k in range(args.events)]
    mirror = Path(tempfile.mkdtemp(prefix="live-read-")) / "features.mirror"
    writer = MirrorWriter.create(mirror, window_fields(WINDOWS), max_items=200_000, max_users=200_000)
    memory = MemoryStore(ttl_s=2 * 7 * 86400.0)
    for sink in (writer, memory):
        pub = StorePublisher(RealtimeFeatures(WINDOWS, item_category=cat_of), sink, 30)
        for k in range(0, len(events), 1000):
            pub.apply(events[k:k + 1000])
    writer.heartbeat(time.time())
    arms = {}
    for name, store in (("memory", memory), ("mirror", MirrorStore(mirror))):
        live = LiveFeatures(store, RealtimeFeatures(WINDOWS), history_len=30)
        binding = live.bind(_Snapshot(n), ids, cats)
        live.load_baselines(ids, np.full(n, 5.0), np.full(n, 1.0))
        arms[name] = (live, binding)
    reqs = [rng.integers(0, n, args.rows) for _ in range(200)]
    users = [f"u{int(rng.integers(0, int(args.users * 1.2)))}" for _ in range(200)]
    got: dict[str, list[float]] = {f"{a}_{w}": [] for a in arms for w in ("read_rows_us", "read_user_us")}
    zeros = np.zeros(args.rows)
    for p in range(args.passes):
        for name, (live, binding) in arms.items():
            t0 = time.perf_counter()
            for r in reqs:
                live.read_rows(binding, r, now, zeros, zeros)
            t1 = time.perf_counter()
            for u in users:
                live.read_user(u, now, binding)
            t2 = time.perf_counter()
            if p:
                got[f"{name}_read_rows_us"].append((t1 - t0) / len(reqs) * 1e6)
                got[f"{name}_read_user_us"].append((t2 - t1) / len(users) * 1e6)
        print(f"pass {p + 1}/{args.passes}" + (" (warm-up)" if not p else ""), flush=True) if not args.json else None
    out = {k: {"min": round(min(v), 1), "median": round(float(np.median(v)), 1)} for k, v in got.items()}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: min {v['min']} us, median {v['median']} us"
                                                      for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
