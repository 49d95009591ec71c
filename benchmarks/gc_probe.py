"""How long does one full cyclic-GC collection take with a model loaded? (serving/heap.py)

    python benchmarks/gc_probe.py var/bench/serve/u1000000-i1000000-d5/model

Loads the bundle as serving does (``load_recommender``), counts the objects the collector
tracks, times three full collections, then freezes the heap (``serving.heap.freeze_loaded``)
and times one more. Run it on a quiet machine; the figures go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model bundle directory")
    ap.add_argument("--repeats", type=int, default=3, help="full collections timed before the freeze")
    args = ap.parse_args()
    from feedrank.serving.factory import load_recommender
    from feedrank.serving.heap import freeze_loaded

    t = time.perf_counter()
    rec = load_recommender(args.model)
    out = {"model": args.model, "model_version": rec.model_version, "load_s": round(time.perf_counter() - t, 1),
           "tracked_objects": len(gc.get_objects()), "full_collect_ms": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        gc.collect()
        out["full_collect_ms"].append(round(1000 * (time.perf_counter() - t), 1))
    out["freeze"] = freeze_loaded("probe").__dict__
    t = time.perf_counter()
    gc.collect()
    out["full_collect_ms_after_freeze"] = round(1000 * (time.perf_counter() - t), 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
