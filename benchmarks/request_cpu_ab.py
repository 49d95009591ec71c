"""CPU per feed request in process, two code trees A/B, rounds interleaved (benchmarks/README.md,
"Round 6b: request path CPU").

Each arm is a worker process that loads the bundle once with its own code on ``PYTHONPATH``
(``--a`` / ``--b``: a ``src`` folder; "" = the installed package), then runs rounds of
``--requests`` feed requests (90% known users, k=20, the real clock) each followed by
``observe`` of its 20 impressions, as a server's request path does. The rounds alternate
A, B, A, B..., both arms get the same users per round, and each round reports the process
CPU per request (``time.process_time``) and the mean of each stage's wall time
(``FeedResponse.timings_ms``). Both arms are in memory at once (about 5 GiB each at 1M items).

    cp -r src /tmp/base-src        # before the change
    python benchmarks/request_cpu_ab.py var/bench/serve/u1000000-i1000000-d5/model --a /tmp/base-src --b src \\
        --rounds 6 --requests 1000 --warmup-rounds 2
    python benchmarks/request_cpu_ab.py MODEL --model-a /tmp/model-old-index --a /tmp/base-src --b src   # index too
    python benchmarks/request_cpu_ab.py MODEL --set-a features.live=false     # one tree, two configs
    python benchmarks/request_cpu_ab.py MODEL --mirror-b    # B reads live features from a node mirror

``--mirror-b``: arm B runs with ``features.consumer=node`` and reads a shared-memory mirror
(features/mirror.py) that this script creates empty and keeps beating, as a node consumer
would (arm A's memory:// store is empty too: neither arm runs a consumer here), so the two
arms differ only in how the request path reads the live features.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r"""
import json, os, sys, tempfile, time
import numpy as np
from feedrank.serving.factory import build_service
from feedrank.types import Event, EventKind, FeedRequest
_, _, rec, _ = build_service(sys.argv[1], tempfile.mkdtemp(prefix="cpu-ab-events-"), overrides=tuple(json.loads(sys.argv[2])),
                             mirror_path=os.environ.get("FEEDRANK_AB_MIRROR") or None)
known = rec.art.snapshot.user_ids
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    seed, n = json.loads(line)
    rng = np.random.default_rng(seed)
    users = [str(known[i]) if rng.random() < 0.9 else f"new-{seed}-{i}" for i in rng.integers(0, len(known), n)]
    stages, c0 = {}, time.process_time()
    for i, u in enumerate(users):
        resp = rec.recommend(FeedRequest(user_id=u, k=20, deadline_ms=10_000.0))
        now = time.time()
        rec.observe([Event(event_id=f"r{seed}-{i}:{it.rank}", ts=now, user_id=u, item_id=it.item_id,
                           kind=EventKind.IMPRESSION, position=it.rank - 1, request_id=f"r{seed}-{i}",
                           propensity=it.propensity) for it in resp.items])
        for k, v in resp.timings_ms.items():
            stages[k] = stages.get(k, 0.0) + v
    cpu = (time.process_time() - c0) * 1000.0 / n
    print(json.dumps({"cpu_ms": cpu, **{k: v / n for k, v in stages.items()}}), flush=True)
"""


def _start(model: str, src: str, overrides: list[str], mirror: str = "") -> subprocess.Popen:
    env = dict(os.environ, FEEDRANK_AB_MIRROR=mirror)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve()) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, model, json.dumps(overrides)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    ready = proc.stdout.readline()
    if not ready:
        raise SystemExit(f"worker for {src or 'the installed package'} exited while loading {model}")
    return proc


def _round(proc: subprocess.Popen, seed: int, n: int) -> dict:
    proc.stdin.write(json.dumps([seed, n]) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("a worker died during a round")
    return json.loads(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="bundle folder (read only)")
    ap.add_argument("--a", default="", help="src folder of arm A (default: the installed package)")
    ap.add_argument("--b", default="", help="src folder of arm B (default: the installed package)")
    ap.add_argument("--model-a", default="", help="arm A's bundle when it differs (e.g. the same bundle with its "
                                                  "previous index file; default: MODEL)")
    ap.add_argument("--set-a", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config override for arm A only (repeatable), e.g. features.live=false")
    ap.add_argument("--set-b", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config override for arm B only (repeatable)")
    ap.add_argument("--rounds", type=int, default=6, help="measured rounds per arm")
    ap.add_argument("--requests", type=int, default=1000, help="requests per round")
    ap.add_argument("--warmup-rounds", type=int, default=2, help="rounds per arm run first and not reported")
    ap.add_argument("--mirror-b", action="store_true",
                    help="arm B reads the live features from a node consumer's mirror (features.consumer=node)")
    ap.add_argument("--json", action="store_true", help="one JSON object at the end instead of a table")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.requests < 1 or args.warmup_rounds < 0:
        ap.error("--rounds and --requests must be >= 1, --warmup-rounds >= 0")
    if not Path(args.model, "manifest.json").is_file():
        ap.error(f"{args.model}: not a model bundle (no manifest.json)")
    model_a = args.model_a or args.model
    if not Path(model_a, "manifest.json").is_file():
        ap.error(f"--model-a {model_a}: not a model bundle (no manifest.json)")
    writer = None
    if args.mirror_b:
        from feedrank.config import FeaturesConfig
        from feedrank.features.live_io import window_fields
        from feedrank.features.mirror import MirrorWriter

        mirror = str(Path(tempfile.mkdtemp(prefix="cpu-ab-mirror-")) / "features.mirror")
        fc = FeaturesConfig()  # the windows and bounds arm B's workers read with
        writer = MirrorWriter.create(mirror, window_fields(fc.windows_s), max_items=fc.max_items, max_users=fc.max_users)
        writer.heartbeat(time.time())
    arms = {"A": _start(model_a, args.a, args.set_a),
            "B": _start(args.model, args.b, args.set_b + (["features.consumer=node"] if writer else []),
                        mirror if writer else "")}
    rows: dict[str, list[dict]] = {"A": [], "B": []}
    try:
        for r in range(args.warmup_rounds + args.rounds):
            for name, proc in arms.items():
                if writer is not None:
                    writer.heartbeat(time.time())  # a live node: not stalled
                got = _round(proc, 1000 + r, args.requests)
                if r >= args.warmup_rounds:
                    got["load"] = os.getloadavg()[0]
                    rows[name].append(got)
                    if not args.json:
                        print(f"round {r - args.warmup_rounds} {name}: " +
                              " ".join(f"{k} {v:.3f}" for k, v in got.items()), flush=True)
    finally:
        for proc in arms.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    summary = {name: {k: sorted(x[k] for x in got)[len(got) // 2] for k in got[0]} for name, got in rows.items()}
    if args.json:
        print(json.dumps({"rounds": rows, "median": summary}))
    else:
        for name, med in summary.items():
            print(f"median {name}: " + " ".join(f"{k} {v:.3f}" for k, v in med.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
