"""Peak memory and CPU time of the betting interval's end point search on a large log.

Draws ``--rounds`` rounds with exponential(1) importance weights (mean 1) and Bernoulli(0.3)
rewards, computes ``ope_betting.ips_betting_interval`` once (per round, or one bet per user with
``--users``) and prints both ends, the process CPU seconds of that call and the peak resident
memory (``ru_maxrss``, which includes the interpreter, numpy/scipy and the input arrays).
``--whole-grid`` evaluates the 49-candidate grid on all rounds at once, as before the review of
issue 8 (same ends, O(grid x N) memory), for comparison. Run each variant in its own process:
``ru_maxrss`` is a high-water mark.

Examples:
    .venv/bin/python benchmarks/ope_betting_memory.py --rounds 2000000
    .venv/bin/python benchmarks/ope_betting_memory.py --rounds 2000000 --whole-grid
    .venv/bin/python benchmarks/ope_betting_memory.py --rounds 200000 --users 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

import feedrank.evaluation.ope_betting as ob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Examples:")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2_000_000, help="logged rounds (default 2,000,000)")
    ap.add_argument("--users", type=int, default=0, help="bet per user over this many users (default 0: per round)")
    ap.add_argument("--whole-grid", action="store_true", help="no chunking (the pre-review memory use)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.rounds < 1 or a.users < 0:
        ap.error("--rounds must be at least 1 and --users at least 0")
    if a.whole_grid:
        ob._CHUNK = 1 << 62
    rng = np.random.default_rng(a.seed)
    w = rng.exponential(1.0, a.rounds)
    r = (rng.random(a.rounds) < 0.3).astype(float)
    users = rng.integers(0, a.users, a.rounds) if a.users else None
    t0 = time.process_time()
    lo, hi = ob.ips_betting_interval(r, w, 0.9, users)
    cpu = time.process_time() - t0
    print(json.dumps({"rounds": a.rounds, "users": a.users, "whole_grid": a.whole_grid, "lo": lo, "hi": hi,
                      "cpu_s": round(cpu, 3), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main()
