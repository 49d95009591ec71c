"""`feedrank eval`: offline metrics of a model bundle on a dataset's test split."""

from __future__ import annotations

import json

import click

from feedrank.cli.common import say


@click.command("eval")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Canonical dataset folder.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Model bundle folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (progress goes to stderr).")
@click.option("--oracle", is_flag=True, help="Synthetic worlds: also score the true attractiveness (what a perfect ranker gets).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Also write the JSON to this file.")
@click.option("--beyond", is_flag=True, help="Add `beyond`: per-segment and position-debiased metrics, calibration curve, "
              "and what the model serves (coverage, diversity, novelty, freshness, creator exposure Gini and group disparity).")
@click.option("--beyond-users", default=400, show_default=True, type=click.IntRange(2), help="Feeds served for --beyond.")
def eval_cmd(data_dir: str, model_dir: str, as_json: bool, oracle: bool, out_file: str | None, beyond: bool,
             beyond_users: int) -> None:
    """Evaluate a model on the test side of the dataset's time split.

    Prints `retrieval` (recall@10, recall@100, ndcg@10 of retrieval as served: the ANN's
    top, recent and popular items rescored with the bundle's fitted prior), `retrieval_tower`
    (the same for the ANN alone), `ranking` (auc, gauc, mrr,
    ndcg@5, ndcg@10; null when the data has no impressions), `split` (boundary, counts)
    and popularity baselines.

    \b
    Examples:
      feedrank eval --data var/world --model var/model --json
      feedrank eval --data var/world --model var/model --json --oracle
      feedrank eval --data var/ml100k --model var/ml100k-model --json --out ml100k.json
      feedrank eval --data var/world --model var/model --json --beyond
    """
    if beyond:
        from feedrank.evaluation.beyond import evaluate_beyond, load_and_prepare
        from feedrank.evaluation.offline import evaluate_prepared

        art, prep = load_and_prepare(model_dir, data_dir, say=say)
        result = evaluate_prepared(art, prep, oracle=oracle, say=say)
        result["model_version"] = art.version
        result["beyond"], _ = evaluate_beyond(art, prep, n_users=beyond_users, say=say)
        result["beyond"].get("served", {}).pop("lorenz_exposure", None)
    else:
        from feedrank.evaluation.offline import evaluate_model

        result = evaluate_model(data_dir, model_dir, oracle=oracle, say=say)
    text = json.dumps(result, indent=None if as_json else 2, sort_keys=True, default=float)
    if out_file:
        with open(out_file, "w") as f:
            f.write(text + "\n")
    click.echo(text)


@click.group("ope")
def ope_group() -> None:
    """Off-policy estimates (IPS, SNIPS, DR) of a new policy's click rate, validated on the
    synthetic world, and position bias (examination per slot) from a log (docs/evaluation.md).

    \b
    Examples:
      feedrank ope estimate --data var/world --json
      feedrank ope check --seeds 50 --out benchmarks/results/ope_coverage.json
      feedrank ope position-bias --data var/world
    """


def _interval_methods() -> tuple[str, ...]:
    from feedrank.evaluation.ope_intervals import INTERVAL_METHODS

    return INTERVAL_METHODS


def _policy_options(f):
    f = click.option("--beta", default=1.0, show_default=True, type=float,
                     help="Target policy sharpness: pi(j) ∝ (a_j exp(noise eps_j)) ** beta.")(f)
    f = click.option("--noise", default=0.5, show_default=True, type=float,
                     help="Target ranker's log-normal score error per item.")(f)
    f = click.option("--sample", default=0.5, show_default=True, type=float,
                     help="Share of sessions the estimators see (the truth uses all).")(f)
    f = click.option("--level", default=0.9, show_default=True, type=float, help="Two-sided interval level.")(f)
    from feedrank.evaluation.ope import DEFAULT_METHOD, INTERVAL_METHODS

    f = click.option("--interval", "method", default=DEFAULT_METHOD, show_default=True,
                     type=click.Choice(list(INTERVAL_METHODS)),
                     help="Interval: el = empirical likelihood (with E[w] = 1 for IPS/DR), hall = Wald with Hall's "
                     "skewness correction, normal = plain Wald, boot-t = studentised cluster bootstrap, bca = BCa "
                     "cluster bootstrap, boot-t-vst = studentised cluster bootstrap on a variance-stabilised scale "
                     "(2000 seeded resamples of users), betting = betting interval, valid by construction (needs only "
                     "rewards in [0, 1] and E[w] = 1). Every method's interval is kept in the JSON.")(f)
    return f


@ope_group.command("estimate")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A synthetic dataset folder (written by `feedrank data synth`, with truth/).")
@_policy_options
@click.option("--seed", default=0, show_default=True, type=int, help="Target noise and log sample seed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ope_estimate_cmd(data_dir: str, beta: float, noise: float, sample: float, level: float, method: str, seed: int,
                     as_json: bool) -> None:
    """Estimate a target ranker's top-slot CTR from a synthetic world's log; print the truth.

    \b
    Examples:
      feedrank ope estimate --data var/demo/full/world
      feedrank ope estimate --data var/world --beta 2 --noise 0.3 --json
      feedrank ope estimate --data var/world --interval hall
    """
    from feedrank.evaluation.ope_synth import TargetPolicy, evaluate_log

    r = evaluate_log(data_dir, TargetPolicy(beta=beta, noise=noise, seed=seed), sample=sample, level=level, seed=seed,
                     method=method)
    if as_json:
        click.echo(json.dumps(r, sort_keys=True, default=float))
        return
    click.echo(f"truth {r['truth']:.4f} (logging policy {r['logging_truth']:.4f}); "
               f"{r['n_logged']} of {r['n_sessions']} sessions logged")
    for name, e in r["estimates"].items():
        click.echo(f"{name:<6} {e['value']:.4f}  {int(level * 100)}% [{e['lo']:.4f}, {e['hi']:.4f}]  "
                   f"{'covers' if e['covers'] else 'MISSES'}  ess {e['ess']:.0f}  max w {e['max_weight']:.1f}"
                   + ("  (crossed: the interval's raw ends crossed; widened to hold both)" if e.get("crossed") else ""))


@ope_group.command("check")
@click.option("--seeds", default=50, show_default=True, type=click.IntRange(1), help="Number of seeded worlds.")
@click.option("--first-seed", default=0, show_default=True, type=click.IntRange(0),
              help="Seeds run from here: FIRST..FIRST+N-1 (to add runs to an earlier check).")
@click.option("--users", default=20_000, show_default=True, type=click.IntRange(10))
@click.option("--items", default=1_000, show_default=True, type=click.IntRange(10))
@click.option("--days", default=14, show_default=True, type=click.IntRange(1))
@click.option("--activity", default=0.15, show_default=True, type=float)
@_policy_options
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the JSON result here.")
@click.option("--no-progress", is_flag=True)
def ope_check_cmd(seeds: int, first_seed: int, users: int, items: int, days: int, activity: float, beta: float,
                  noise: float, sample: float, level: float, method: str, out_file: str | None, no_progress: bool) -> None:
    """Coverage check: in each of N seeded worlds, do IPS/SNIPS/DR intervals cover the simulated truth?

    Prints, per estimator, the coverage of the chosen interval with its 95% Clopper-Pearson
    range (50 runs pin a 90% coverage down only to about +-8 points), every interval
    method's coverage, bias, RMSE and width; and the examination curve from EM and from the
    log's randomisation against the world's.

    \b
    Examples:
      feedrank ope check --seeds 50 --out benchmarks/results/ope_coverage.json
      feedrank ope check --seeds 50 --first-seed 50 --out benchmarks/results/ope_coverage_50_99.json
      feedrank ope check --seeds 10 --users 2000 --items 300 --days 4 --interval hall
      feedrank ope check --seeds 10 --beta 0.5 --interval boot-t --out /tmp/beta05_boot_t.json
      feedrank ope check --seeds 10 --interval betting --out /tmp/betting.json
    """
    import time

    from feedrank.evaluation.ope_synth import TargetPolicy, coverage_check

    t0 = time.perf_counter()
    world = {"n_users": users, "n_items": items, "n_days": days, "activity_mean": activity}
    r = coverage_check(list(range(first_seed, first_seed + seeds)), world, TargetPolicy(beta=beta, noise=noise),
                       sample=sample, level=level, show_progress=not no_progress, method=method)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    r["command"] = (f"feedrank ope check --seeds {seeds} --first-seed {first_seed} --users {users} --items {items} "
                    f"--days {days} --activity {activity} --beta {beta} --noise {noise} --sample {sample} "
                    f"--level {level} --interval {method}")
    if out_file:
        with open(out_file, "w") as f:
            f.write(json.dumps(r, indent=1, sort_keys=True, default=float) + "\n")
    click.echo(f"{r['n_runs']} worlds, {level:.0%} intervals ({method}), {r['seconds']} s")
    _print_summary(r)


def _print_summary(r: dict) -> None:
    for name, s in r["summary"].items():
        others = "  ".join(f"{m} {v['coverage']:.0%}" for m, v in s["coverage_by_method"].items())
        click.echo(f"{name:<6} coverage {s['coverage']:.0%} ({s['covered']}/{s['runs']}, 95% range "
                   f"{s['coverage_ci95'][0]:.0%}-{s['coverage_ci95'][1]:.0%})  bias {s['mean_bias']:+.4f}  "
                   f"rmse {s['rmse']:.4f}  mean width {s['mean_width']:.4f} ({s['mean_rel_width']:.0%} of truth)"
                   + (f"  [{others}]" if others else ""))
    wt = r.get("weights") or {}
    if wt:
        click.echo(f"weights: mean {wt['mean_weight']:.4f}; z of (mean w - 1) over runs: mean {wt['z_mean']:+.2f}, "
                   f"sd {wt['z_sd']:.2f} (exact propensities: about 0 and 1)")
    pb = r.get("position_bias") or {}
    if pb:
        click.echo(f"examination: true {pb['true_theta']}\n  EM        {pb['em_mean_theta']} (mean abs error "
                   f"{pb['em_mean_abs_error']:.4f})\n  harvested {pb['harvest_mean_theta']} (mean abs error "
                   f"{pb['harvest_mean_abs_error']:.4f}, intervals cover {pb['harvest_interval_coverage']:.0%})")


@ope_group.command("summarize")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the pooled summary as one JSON object.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the pooled result with every run (the shape `ope check --out` writes), e.g. to join "
              "checks run in chunks of seeds.")
def ope_summarize_cmd(files: tuple[str, ...], as_json: bool, out_file: str | None) -> None:
    """Pool the runs of several `feedrank ope check` outputs (same settings, different seeds)
    and print their joint coverage, bias and RMSE.

    \b
    Examples:
      feedrank ope summarize benchmarks/results/ope_coverage.json benchmarks/results/ope_coverage_seeds50_99.json
      feedrank ope summarize part0.json part1.json --out joined.json
    """
    from feedrank.errors import SchemaError
    from feedrank.evaluation.ope_synth import summarize, summarize_position_bias, summarize_weights

    runs, settings, seen, sources = [], None, set(), []
    for path in files:
        with open(path) as f:
            r = json.load(f)
        sources.append({"file": path, "command": r.get("command"), "seconds": r.get("seconds")})
        if "runs" not in r:
            raise click.ClickException(f"{path}: not a `feedrank ope check` output (no runs)")
        key = {k: r.get(k, "hall" if k == "method" else None) for k in ("level", "sample", "world", "policy", "method")}
        if settings is not None and key != settings:
            raise SchemaError(f"{path}: different settings from {files[0]}", [f"{key} != {settings}"])
        settings = key
        for run in r["runs"]:
            if run["seed"] in seen:
                raise SchemaError(f"{path}: seed {run['seed']} appears in more than one file")
            seen.add(run["seed"])
            runs.append(run)
    out = {**(settings or {}), "files": list(files), "n_runs": len(runs), "summary": summarize(runs),
           "position_bias": summarize_position_bias(runs), "weights": summarize_weights(runs)}
    if out_file:
        joined = {**out, "runs": sorted(runs, key=lambda x: x["seed"]), "sources": sources,
                  "command": "feedrank ope summarize " + " ".join(files) + f" --out {out_file}"}
        with open(out_file, "w") as f:
            f.write(json.dumps(joined, indent=1, sort_keys=True, default=float) + "\n")
    if as_json:
        click.echo(json.dumps(out, sort_keys=True, default=float))
        return
    click.echo(f"{len(runs)} runs from {len(files)} file(s)")
    _print_summary(out)


@ope_group.command("main-interval")
@click.argument("in_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--interval", "method", required=True,
              type=click.Choice(list(_interval_methods())),
              help="The recorded interval method to make the main one.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="Where to write the result.")
def ope_main_interval_cmd(in_file: str, method: str, out_file: str) -> None:
    """Rewrite a `feedrank ope check` output with another recorded interval as the main one
    (`lo`, `hi`, `covers` and the summary), without re-running the worlds: every run keeps
    every method's interval. The result is what `ope check --interval METHOD` writes for
    the same seeds, except `seconds`.

    \b
    Examples:
      feedrank ope main-interval benchmarks/results/ope_coverage.json --interval boot-t --out /tmp/cov_boot_t.json
    """
    from feedrank.evaluation.ope_synth import with_main_interval

    with open(in_file) as f:
        r = json.load(f)
    out = with_main_interval(r, method)
    with open(out_file, "w") as f:
        f.write(json.dumps(out, indent=1, sort_keys=True, default=float) + "\n")
    click.echo(f"{out['n_runs']} runs, main interval {method}")
    _print_summary(out)


@ope_group.command("position-bias")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A dataset folder whose impressions carry Plackett-Luce draw propensities (the synthetic world's do).")
@click.option("--level", default=0.9, show_default=True, type=float, help="Two-sided interval level of the harvested curve.")
@click.option("--positions", default=10, show_default=True, type=click.IntRange(2), help="Positions to estimate (0..N-1).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ope_position_bias_cmd(data_dir: str, level: float, positions: int, as_json: bool) -> None:
    """Examination per position: harvested from the log's own randomisation (swaps of slot 0
    and slot k, weighted by their logged-propensity odds) and fitted by EM (position-based
    click model); with the world's true curve when the dataset is synthetic.

    Either curve can be passed to the debiased metrics (click_models.debiased_auc /
    debiased_ndcg take `curve.examination(positions)`).

    \b
    Examples:
      feedrank ope position-bias --data var/world
      feedrank ope position-bias --data var/demo/full/world --positions 5 --json
    """
    from feedrank.evaluation.ope_synth import position_bias_report

    r = position_bias_report(data_dir, level=level, n_positions=positions)
    if as_json:
        click.echo(json.dumps(r, sort_keys=True, default=float))
        return
    click.echo(f"{r['n_impressions']} impressions in {r['n_feeds']} feeds")
    click.echo("pos  harvested [interval]        EM      true")
    for k in range(len(r["harvest_theta"])):
        true = f"{r['true_theta'][k]:.3f}" if r.get("true_theta") else "-"
        click.echo(f"{k:>3}  {r['harvest_theta'][k]:.3f} [{r['harvest_lo'][k]:.3f}, {r['harvest_hi'][k]:.3f}]  "
                   f"{r['em_theta'][k]:.3f}   {true}")
