"""The warm-start drill of tests/unit/pipeline/test_retrain.py, with the gate's numbers printed.

A world (800 users, 250 items, 4 days, activity 2.0) is split in time; the champion is
trained on all but the newest 7,000 events, which go into the event log. Then three retrain
cycles run from copies of that registry: one whose ranker is fine-tuned on inverted click
labels (5 epochs, must be refused), one on shuffled labels (1 epoch) and a good one (1 epoch). Prints, for each, the gate's
ranking AUC of champion and challenger on the held-out slice.

    python benchmarks/warmstart_drill.py --seed 3           # the test's world
    python benchmarks/warmstart_drill.py --seed 5 --work /tmp/drill5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from feedrank.bench.retrain import split_world
from feedrank.config import load_config
from feedrank.data.synth import WorldConfig, generate_world
from feedrank.evaluation.abreport import ab_report
from feedrank.evaluation.offline import evaluate_prepared
from feedrank.pipeline.build import train_model
from feedrank.pipeline.retrain import RetrainPolicy, run_cycle
from feedrank.registry.store import ModelRegistry

TRAIN = ["retrieval.epochs=2", "ranking.epochs=3", "retrieval.id_buckets=4096", "retrieval.text_buckets=4096",
         "ranking.max_train_examples=15000", "ranking.distill_hidden=[]"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=3, help="world seed (the test uses 3)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="warmstart-drill-"))
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"--work {root} is not empty")
    now = float(int(time.time() // 3600 * 3600))
    generate_world(root / "world", WorldConfig(n_users=800, n_items=250, n_days=4, activity_mean=2.0, seed=args.seed,
                                               start=now - 4 * 86400.0), progress=False)
    split_world(root / "world", root / "base", root / "registry" / "events", 7000)
    train_model(root / "base", root / "champion", load_config(None, TRAIN), show_progress=False,
                evaluator=evaluate_prepared, say=lambda m: None)
    ModelRegistry(root / "registry").publish(root / "champion", promote=True)
    drills = (("inverted labels", 5, lambda y, rng: 1 - y), ("shuffled labels", 1, lambda y, rng: rng.permutation(y)),
              ("good", 1, None))
    for name, epochs, noise in drills:
        reg = root / f"registry-{name.replace(' ', '-')}"
        shutil.copytree(root / "registry", reg)
        res = run_cycle(reg, reg / "events", None, evaluate_prepared, ab_report, RetrainPolicy(epochs=epochs),
                        str(root / "base"), show_progress=False, say=lambda m: None, label_noise=noise)
        a, b = res.gate["champion"]["ranking.auc"], res.gate["challenger"]["ranking.auc"]
        print(f"{name:16s} {res.action:9s} AUC champion {a:.4f} challenger {b:.4f} ({b - a:+.4f})")
    print(f"(scratch: {root})")


if __name__ == "__main__":
    main()
