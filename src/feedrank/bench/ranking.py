"""`feedrank bench ranking`: ranking quality, calibration, fairness, compression and speed.

    feedrank bench ranking --json                      # demo-size world + the MIND sample

Per dataset (synthetic worlds, generated with known truth; the MIND sample, imported):
1. ``train_model`` with the configured defaults, evaluated on the test side: the served
   ranker's AUC, GAUC, MRR, nDCG@5/10, ECE before/after calibration, exposure disparity;
   its int8 and distilled variants; popularity and recency baselines; the oracle (worlds).
2. A comparison on one set of cached point-in-time examples (same train rows, same test
   rows, each variant trained from the same seed): the foundation's ranker (MLP, base
   features), interactions (mlp / dcn / dot), losses (pointwise / pairwise / listwise) and
   fairness weights. Each reports the same metrics (ECE after fitting the configured
   calibrator on the newest train impressions) and its training time.
3. Worlds: the learned position curve ``exp(b_k - b_0)`` against the true examination;
   the oracle with one term of the true attractiveness changed and the Bayes ceiling
   (``bench/ranking_ceiling.py``): what the logs can tell about what the oracle knows.
4. Speed (torch and BLAS threads = serving.torch_threads, each variant in the form
   serving runs, wall and CPU time): p50/p99 ms to score 100/500/2000
   candidates at batch 1 for full, int8 and distilled; the full ranker's FLOPs per
   candidate and the FLOP floor (FLOPs / matmul throughput measured in the same run);
   what the latency-budget policy picks for a range of budgets.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from feedrank.config import FeedrankConfig, load_config
from feedrank.evaluation.metrics import auc, expected_calibration_error, impression_metrics
from feedrank.ranking.calibration import fit_calibrator
from feedrank.ranking.compress import RankBudget, measure_cost, quantize_int8, serving_form, time_scoring
from feedrank.ranking.fairness import exposure_disparity
from feedrank.ranking.features import N_BASE_FEATURES
from feedrank.ranking.model import implied_examination, logits
from feedrank.ranking.train import train_ranker

# name -> (RankingConfig overrides, base features only)
COMPARISON: dict[str, tuple[dict[str, Any], bool]] = {
    "foundation (mlp, base features)": ({"interaction": "mlp"}, True),
    "mlp": ({"interaction": "mlp"}, False),
    "dcn": ({"interaction": "dcn"}, False),
    "dot": ({"interaction": "dot"}, False),
    "mlp pairwise": ({"interaction": "mlp", "loss": "pairwise"}, False),
    "mlp listwise": ({"interaction": "mlp", "loss": "listwise"}, False),
    "mlp fairness 0.01": ({"interaction": "mlp", "fairness_weight": 0.01}, False),
    "mlp fairness 0.02": ({"interaction": "mlp", "fairness_weight": 0.02}, False),
    "mlp fairness 0.1": ({"interaction": "mlp", "fairness_weight": 0.1}, False),
}


def _r(x: float) -> float:
    return round(float(x), 4)


def _metrics(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    m = impression_metrics(labels, scores, groups)
    return {"auc": _r(auc(labels, scores)), "gauc": _r(m["gauc"]), "mrr": _r(m["mrr"]),
            "ndcg@5": _r(m["ndcg@5"]), "ndcg@10": _r(m["ndcg@10"])}


def ranker_flops(model: torch.nn.Module, n_features: int) -> int:
    """Multiply-add FLOPs (2 per MAC) per candidate of the full ranker's serving forward."""
    flops = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            flops += 2 * mod.in_features * mod.out_features
    dot = getattr(model, "dot", None)
    if dot is not None:
        f = dot.field.shape[0] + 1
        flops += 2 * f * f * dot.field.shape[1]
    return int(flops + 4 * n_features)  # + normalisation and cross-layer elementwise work (small)


def matmul_gflops(n: int = 512, reps: int = 20) -> float:
    """Measured float32 GEMM throughput (GFLOP/s) at the current torch thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def _examples(art, prep, cfg: FeedrankConfig, max_train: int, max_test: int, seed: int):
    """(train, test, n_categories) point-in-time examples with the bundle's two-tower."""
    from feedrank.pipeline.examples import fit_engagement_spec, ranking_examples

    ev, split, catalog = prep.events, prep.split, prep.catalog
    n_cat = len(prep.vocabs["category"])
    train = np.zeros(len(ev), dtype=bool)
    train[split.train_idx] = True
    imp = ev.mask("impression")
    spec = fit_engagement_spec(ev, np.flatnonzero(train), prep.items, catalog, n_cat)
    tr = np.flatnonzero(train & imp)[-max_train:]
    te = np.flatnonzero(~train & imp & (ev.request_codes >= 0))
    if len(te) > max_test:
        g = np.unique(ev.request_codes[te])
        keep = np.random.default_rng(seed).choice(g, size=max(1, int(len(g) * max_test / len(te))), replace=False)
        te = te[np.isin(ev.request_codes[te], keep)]
    prior = float(art.info.get("prior_ctr", 0.05))
    mk = lambda rows: ranking_examples(ev, rows, catalog, art.two_tower, art.item_vectors, n_cat,  # noqa: E731
                                       cfg.retrieval.history_len, prior, cfg.ranking.ctr_prior, spec)
    return mk(tr), mk(te), n_cat, spec


def compare_variants(art, prep, cfg: FeedrankConfig, max_train: int, max_test: int, seed: int,
                     say: Callable[[str], None], names: list[str] | None = None) -> dict[str, Any]:
    """Train every COMPARISON variant on the same cached examples; metrics on the same test rows."""
    t0 = time.perf_counter()
    tr, te, n_cat, spec = _examples(art, prep, cfg, max_train, max_test, seed)
    say(f"  examples: {len(tr.labels):,} train, {len(te.labels):,} test ({time.perf_counter() - t0:.0f}s)")
    cut = len(tr.labels) - int(len(tr.labels) * cfg.ranking.calibration_fraction)
    while 0 < cut < len(tr.labels) and tr.groups[cut] == tr.groups[cut - 1]:
        cut += 1
    fit, cal = slice(0, cut), slice(cut, None)
    log_dwell = np.log1p(tr.dwell_ms / 1000.0)
    prot_tr, prot_te = spec.creator_new[tr.items] > 0, spec.creator_new[te.items] > 0
    out: dict[str, Any] = {"n_train": int(cut), "n_calibration": int(len(tr.labels) - cut), "n_test": int(len(te.labels))}
    for name in names or list(COMPARISON):
        over, base_only = COMPARISON[name]
        rc = dataclasses.replace(cfg.ranking, **over)
        cols = slice(0, N_BASE_FEATURES) if base_only else slice(None)
        torch.manual_seed(seed)
        t = time.perf_counter()
        model, _ = train_ranker(rc, tr.dense[fit, cols], tr.category[fit], tr.position[fit], tr.labels[fit], n_cat,
                                np.random.default_rng(seed), False, groups=tr.groups[fit], log_dwell=log_dwell[fit],
                                protected=prot_tr[fit], init_examination=spec.exam)
        secs = time.perf_counter() - t
        z = logits(model, te.dense[:, cols], te.category)
        row = _metrics(te.labels, z, te.groups)
        calib = fit_calibrator(cfg.ranking.calibration, logits(model, tr.dense[cal, cols], tr.category[cal]), tr.labels[cal])
        row["ece_uncalibrated"] = _r(expected_calibration_error(te.labels, 1 / (1 + np.exp(-z.astype(np.float64)))))
        row["ece"] = _r(expected_calibration_error(te.labels, calib.apply(z)))
        row["exposure_disparity"] = _r(exposure_disparity(z, te.groups, prot_te)["disparity"])
        row["train_seconds"] = round(secs, 1)
        if name == "mlp":
            row["learned_examination"] = [_r(v) for v in implied_examination(model, te.dense, te.category, 10)]
        out[name] = row
        say(f"  {name:32s} AUC {row['auc']:.4f} nDCG@10 {row['ndcg@10']:.4f} ECE {row['ece']:.4f} "
            f"disparity {row['exposure_disparity']:.3f} ({secs:.0f}s)")
    return out


def speed(art, cfg: FeedrankConfig, reps: int, say: Callable[[str], None]) -> dict[str, Any]:
    """p50/p99 per variant and size, the FLOP floor, and the budget policy's choices.

    Each variant is timed in the form serving runs (``runtime.RankerRuntime``: the numpy
    export where one exists, else torch), with torch and BLAS threads at
    ``serving.torch_threads`` as in the server; ``ms`` is wall time, ``cpu_ms`` this
    thread's CPU time (the code's own tail on a machine shared with other jobs)."""
    from threadpoolctl import threadpool_limits

    from feedrank.ranking.runtime import to_numpy

    torch.set_num_threads(cfg.serving.torch_threads)
    modules = {"full": art.ranker, "int8": quantize_int8(art.ranker)}
    if art.ranker_small is not None:
        modules["distilled"] = serving_form(art.ranker_small)
    models = {k: to_numpy(m) or m for k, m in modules.items()}
    rng = np.random.default_rng(0)
    nf = art.ranker.n_features
    out: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "reps": reps, "ms": {}, "cpu_ms": {},
                           "form": {k: type(m).__name__ for k, m in models.items()}}
    with threadpool_limits(cfg.serving.torch_threads, user_api="blas"):
        for n in (100, 500, 2000):
            dense = (art.ranker.mean.numpy() + rng.standard_normal((n, nf)) * art.ranker.std.numpy()).astype(np.float32)
            cat = rng.integers(0, art.ranker.n_categories, n)
            for name, m in models.items():
                for key, clock in (("ms", "wall"), ("cpu_ms", "cpu")):
                    ms = time_scoring(m, dense, cat, reps=reps, clock=clock)
                    out[key].setdefault(name, {})[str(n)] = {"p50": _r(np.percentile(ms, 50)),
                                                             "p99": _r(np.percentile(ms, 99))}
    flops = ranker_flops(art.ranker, nf)
    gf = matmul_gflops()
    out["flops_per_candidate"] = flops
    out["matmul_gflops"] = round(gf, 2)
    out["flop_floor_ms"] = {str(n): round(flops * n / (gf * 1e9) * 1e3, 5) for n in (100, 500, 2000)}
    sample = art.ranker.mean.numpy()[None, :].repeat(8, 0)
    with threadpool_limits(cfg.serving.torch_threads, user_api="blas"):
        budget = RankBudget({k: measure_cost(m, sample, np.zeros(8, dtype=np.int64)) for k, m in models.items()})
    out["budget_cost_models"] = {k: {"a_ms": _r(c.a_ms), "b_ms_per_candidate": round(c.b_ms, 6)} for k, c in budget.costs.items()}
    out["budget_choices_for_2000"] = {str(b): list(budget.choose(b, 2000)) for b in (8.0, 2.0, 1.0, 0.5, 0.2)}
    f5 = out["ms"]["full"]["500"]
    c5 = out["cpu_ms"]["full"]["500"]
    say(f"  speed @500 (wall; cpu): full p50 {f5['p50']} p99 {f5['p99']}; {c5['p50']} {c5['p99']} ms; " + "; ".join(
        f"{k} p50 {v['500']['p50']} p99 {v['500']['p99']}; {out['cpu_ms'][k]['500']['p50']} {out['cpu_ms'][k]['500']['p99']}"
        for k, v in out["ms"].items() if k != "full")
        + f"; FLOP floor {out['flop_floor_ms']['500']} ms ({flops} FLOPs/candidate, {gf:.1f} GFLOP/s)")
    return out


def freshness_effect(art, prep, cfg: FeedrankConfig, taus: tuple[float, ...] = (0.0, 48.0, 12.0)) -> dict[str, Any]:
    """Mean age (hours) of the top-scored item per test request as tau changes (runtime knob)."""
    from feedrank.pipeline.examples import ranking_examples, spec_from_info
    from feedrank.ranking.runtime import freshness

    ev, split, catalog = prep.events, prep.split, prep.catalog
    rows = np.flatnonzero(np.isin(np.arange(len(ev)), split.test_idx) & ev.mask("impression") & (ev.request_codes >= 0))[:50_000]
    spec = spec_from_info(art.info.get("ranking"), prep.items, catalog)
    ex = ranking_examples(ev, rows, catalog, art.two_tower, art.item_vectors, len(prep.vocabs["category"]),
                          cfg.retrieval.history_len, float(art.info.get("prior_ctr", 0.05)), cfg.ranking.ctr_prior, spec)
    p = art.calibrator.apply(logits(art.ranker, ex.dense, ex.category))
    age = catalog.age_seconds(ex.items, ex.ts)
    out = {}
    for tau in taus:
        s = freshness(p, age, tau)
        order = np.lexsort((-s, ex.groups))
        first = order[np.r_[True, ex.groups[order][1:] != ex.groups[order][:-1]]]
        out[str(tau)] = {"mean_top1_age_hours": _r(age[first].mean() / 3600.0), **_metrics(ex.labels, s, ex.groups)}
    return out


def bench_dataset(name: str, data_dir: Path, model_dir: Path, cfg: FeedrankConfig, max_train: int, max_test: int,
                  reps: int, say: Callable[[str], None], variants: list[str] | None = None,
                  reuse: bool = False) -> dict[str, Any]:
    from feedrank.evaluation.offline import evaluate_prepared
    from feedrank.pipeline.artifacts import load_artifacts
    from feedrank.pipeline.build import prepare, train_model

    t = time.perf_counter()
    if reuse and (model_dir / "manifest.json").exists():
        say(f"[{name}] reusing the bundle {model_dir}")
        art = load_artifacts(model_dir)
        met = evaluate_prepared(art, prepare(data_dir, art.cfg, vocabs=art.vocabs, say=lambda m: None), oracle=True,
                                say=lambda m: None)
    else:
        say(f"[{name}] training the bundle on {data_dir}")
        art = train_model(data_dir, model_dir, cfg, show_progress=False, say=lambda m: None,
                          evaluator=lambda a, p, say: evaluate_prepared(a, p, oracle=True, say=say))
        met = art.info["metrics"]
    res: dict[str, Any] = {"data": str(data_dir), "train_seconds": round(time.perf_counter() - t, 1),
                           "served": met.get("ranking"), "variants": met.get("ranking_variants"),
                           "baselines": {k: v for k, v in met.get("baselines", {}).items() if k.startswith("ranking")},
                           "oracle": (met.get("oracle") or {}).get("ranking")}
    if res["served"]:
        s = res["served"]
        say(f"  served: AUC {s['auc']:.4f} nDCG@10 {s['ndcg@10']:.4f} ECE {s['ece_uncalibrated']:.4f} -> {s['ece']:.4f}"
            + (f"; oracle AUC {res['oracle']['auc']:.4f} nDCG@10 {res['oracle']['ndcg@10']:.4f}" if res["oracle"] else ""))
    prep = prepare(data_dir, cfg, vocabs=art.vocabs, say=lambda m: None)
    res["comparison"] = compare_variants(art, prep, cfg, max_train, max_test, cfg.training.seed, say, variants)
    if res["oracle"]:
        from feedrank.data.synth.truth import WorldTruth

        from feedrank.bench.ranking_ceiling import bayes_ceiling, oracle_ablation

        truth = WorldTruth.load(data_dir)
        res["true_examination"] = [_r(v) for v in truth.examination(np.arange(10))]
        o = res["oracle"]
        res["targets"] = {"auc_ratio": _r(s["auc"] / o["auc"]), "ndcg@10_ratio": _r(s["ndcg@10"] / o["ndcg@10"])}
        t = time.perf_counter()
        res["ceiling"] = {"oracle_ablation": oracle_ablation(prep, truth, max_test),
                          "bayes": bayes_ceiling(prep, truth, n_users=1000, n_samples=2000)}
        b = res["ceiling"]["bayes"]
        say(f"  Bayes ceiling ({b['n_users']} users): AUC {b['bayes']['auc']:.4f} vs oracle {b['oracle']['auc']:.4f} "
            f"({time.perf_counter() - t:.0f}s)")
    res["freshness"] = freshness_effect(art, prep, cfg)
    res["speed"] = speed(art, cfg, reps, say)
    return res


def run_ranking_bench(work_dir: Path, mind_dir: Path | None, worlds: list[tuple[str, int, int, int]],
                      max_train: int = 300_000, max_test: int = 200_000, reps: int = 200,
                      overrides: tuple[str, ...] = (), variants: list[str] | None = None,
                      reuse: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Bench every dataset; ``worlds`` are (name, users, items, days) at activity 1.0, seed 1."""
    from feedrank.data.synth import WorldConfig, generate_world

    cfg = load_config(None, list(overrides))
    work_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"config_overrides": list(overrides), "max_train_examples_comparison": max_train,
                           "datasets": {}}
    for name, users, items, days in worlds:
        data = work_dir / f"world-{name}"
        if not (data / "dataset.json").exists():
            say(f"[{name}] generating a world: {users} users x {items} items x {days} days, activity 1.0")
            generate_world(data, WorldConfig(n_users=users, n_items=items, n_days=days, activity_mean=1.0, seed=1), progress=False)
        out["datasets"][f"synthetic-{name}"] = bench_dataset(name, data, work_dir / f"model-{name}", cfg, max_train,
                                                             max_test, reps, say, variants, reuse)
    if mind_dir is not None:
        from feedrank.data.importers.mind import import_mind

        data = work_dir / "mind"
        if not (data / "dataset.json").exists():
            say(f"[mind] importing {mind_dir}")
            import_mind(mind_dir, data, progress=False)
        out["datasets"]["mind"] = bench_dataset("mind", data, work_dir / "model-mind", cfg, max_train, max_test, reps,
                                                say, variants, reuse)
    return out
