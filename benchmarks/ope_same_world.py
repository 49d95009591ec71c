"""Replicate one synthetic world's log many times: are the OPE standard errors right?

`feedrank ope check` draws a new world per seed, so its spread mixes worlds. This script
keeps one world (users, items, sessions, hence the truth) and re-draws only the logging
policy's feeds and the clicks, by re-seeding the simulator's feed/click stream (stream 3 of
``feedrank.data.synth.simulate``; the daily-refreshed policy state re-evolves from the new
clicks). Over the replications, the standard deviation of the IPS / SNIPS estimates is the
true standard error, to compare with the mean reported one, and the coverage of each
interval is counted against the (fixed) truth.

Usage (about 20 s a replication on a loaded 2-core box):

    .venv/bin/python benchmarks/ope_same_world.py --seed 0 --reps 30 --out benchmarks/results/ope_same_world_s0.json
    .venv/bin/python benchmarks/ope_same_world.py --help
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

import feedrank.data.synth.simulate as simulate
from feedrank.data.synth import WorldConfig, WorldTruth, generate_world
from feedrank.evaluation.ope import INTERVAL_METHODS, estimate_all
from feedrank.evaluation.ope_synth import TargetPolicy, read_log, target_rows


def replicate(seed: int, reps: int, beta: float = 1.0, noise: float = 0.5, sample: float = 0.5,
              level: float = 0.9, cluster_by_user: bool = True) -> dict:
    original = simulate._rng
    rep_id = [0]

    def reseeded(cfg, *stream):  # only the feed/click stream changes between replications
        if stream and stream[0] == 3:
            return np.random.default_rng(np.random.SeedSequence([cfg.seed, 3, 1000 + rep_id[0], *stream[1:]]))
        return original(cfg, *stream)

    cfg = WorldConfig(n_users=20000, n_items=1000, n_days=14, activity_mean=0.15, seed=seed)
    pol = TargetPolicy(beta=beta, noise=noise, seed=seed)
    tmp = Path(tempfile.mkdtemp(prefix="feedrank-same-world-"))
    runs, truth = [], None
    simulate._rng = reseeded
    try:
        for rep in range(reps):
            rep_id[0] = rep
            generate_world(tmp / "w", cfg, progress=False)
            world = WorldTruth.load(tmp / "w").world
            sess, _ = read_log(tmp / "w", world)
            rng = np.random.default_rng(np.random.SeedSequence([seed, 909]))  # the same logged half every time
            keep = np.sort(rng.choice(len(sess.user), size=int(round(sample * len(sess.user))), replace=False))
            if truth is None:
                truth = float(target_rows(world, pol, sess.user, sess.ts, sess.item)["truth"].mean())
            tr = target_rows(world, pol, sess.user[keep], sess.ts[keep], sess.item[keep])
            args = (sess.click[keep], sess.propensity[keep], tr["pi_logged"])
            clusters = sess.user[keep] if cluster_by_user else None
            est = {m: estimate_all(*args, level=level, clusters=clusters, method=m) for m in INTERVAL_METHODS}
            w = tr["pi_logged"] / sess.propensity[keep]
            runs.append({"rep": rep, "ess": float(w.sum() ** 2 / (w * w).sum()), "max_weight": float(w.max()),
                         **{f"{k}_{m}": [e[k].value, e[k].stderr, e[k].lo, e[k].hi]
                            for m, e in est.items() for k in ("ips", "snips")}})
            shutil.rmtree(tmp / "w")
            print(f"rep {rep}: ips {runs[-1]['ips_hall'][0]:.4f} (truth {truth:.4f})", flush=True)
    finally:
        simulate._rng = original
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for k in ("ips", "snips"):
        val = np.array([r[f"{k}_hall"][0] for r in runs])
        se = np.array([r[f"{k}_hall"][1] for r in runs])
        summary[k] = {"sd_of_estimates": float(val.std(ddof=1)), "rms_stderr": float(np.sqrt(np.mean(se**2))),
                      "mean_bias": float(val.mean() - truth),
                      "coverage": {m: float(np.mean([r[f"{k}_{m}"][2] <= truth <= r[f"{k}_{m}"][3] for r in runs]))
                                   for m in INTERVAL_METHODS}}
    return {"seed": seed, "reps": reps, "truth": truth, "level": level, "policy": {"beta": beta, "noise": noise},
            "cluster_by_user": cluster_by_user,
            "mean_ess": float(np.mean([r["ess"] for r in runs])), "summary": summary, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="world seed (as in `feedrank ope check`)")
    ap.add_argument("--reps", type=int, default=30, help="replications of the log")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--no-cluster", action="store_true", help="i.i.d. intervals instead of clustered by user")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    a = ap.parse_args()
    r = replicate(a.seed, a.reps, beta=a.beta, cluster_by_user=not a.no_cluster)
    if a.out:
        a.out.write_text(json.dumps(r, indent=1) + "\n")
    print(json.dumps({"truth": r["truth"], "mean_ess": r["mean_ess"], "summary": r["summary"]}, indent=1))


if __name__ == "__main__":
    main()
