"""`feedrank bench retrieval`: quality on several datasets side by side, and ANN speed."""

from __future__ import annotations

import click

from feedrank.cli.common import config_options, resolve_config, say


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}")
    return values


@click.command("retrieval")
@click.option("--data", "datasets", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset folder (repeatable): synthetic worlds add the oracle's numbers.")
@click.option("--only", type=click.Choice(["all", "quality", "speed"]), default="all", show_default=True,
              help="Run only one section. 'speed' writes benchmarks/results/retrieval_speed.json, "
                   "'quality' retrieval_quality.json, 'all' retrieval.json.")
@click.option("--max-users", default=3000, show_default=True, type=click.IntRange(10), help="Evaluated users per dataset.")
@click.option("--replay-requests", default=3000, show_default=True, type=click.IntRange(0),
              help="Test requests replayed at their own time with the live state, as served (0: boundary protocol only).")
@click.option("--prior-fit", type=click.Choice(["train", "frozen-tail"]), default="train", show_default=True,
              help="How the retrieval prior is fitted: 'train' as `feedrank train` does (retrieval.prior_fit: "
                   "holdout_tail, the newest test_fraction of the train clicks scored by towers trained without "
                   "them; retrieval.prior_fit=in_sample: the newest half, served towers), or 'frozen-tail' (that tail "
                   "scored by the served towers with the state frozen at its start, as the boundary protocol scores).")
@click.option("--served-prior", type=click.Choice(["two_tower_age_prior", "two_tower_prior", "two_tower_prior_ctr",
                                                  "two_tower_prior_feedback"]),
              default="two_tower_prior", show_default=True,
              help="The prior the served row uses: age only, + popularity (what `feedrank train` fits and serving "
                   "uses, the default), + CTR terms, or + the item-feedback term (each item's shrunk mean clicker "
                   "vector, point in time; bench only: not yet fitted by `feedrank train` nor kept by serving).")
@click.option("--feedback-fit", type=click.Choice(["holdout-tail", "same"]), default="holdout-tail", show_default=True,
              help="How the item-feedback prior is fitted: on the last test_fraction of the train clicks with towers "
                   "trained without them ('holdout-tail', as a new item meets the served towers), or like the others.")
@click.option("--cold-user-weights", is_flag=True,
              help="Keep the prior's weights for users without history whatever the held-out comparison says "
                   "(retrieval.cold_user_weights=always; `feedrank train` uses retrieval.cold_user_weights, auto by default).")
@click.option("--category-term/--no-category-term", default=True, show_default=True,
              help="Fit the prior's category term (w_cat * log of the user's history share of the item's category), "
                   "as `feedrank train` does; --no-category-term gives the prior without it, for comparison.")
@click.option("--new-item-terms", is_flag=True,
              help="Also fit the prior's terms for items new to the towers (own intercept, age, popularity and tower "
                   "weights; experimental, `feedrank train` does not fit them).")
@click.option("--speed-items", default=1_000_000, show_default=True, type=click.IntRange(0),
              help="Items in the synthetic speed corpus (0 skips the speed section).")
@click.option("--speed-dim", default=64, show_default=True, type=click.IntRange(4, 1024))
@click.option("--speed-queries", default=500, show_default=True, type=click.IntRange(10), help="Timed queries per setting.")
@click.option("--speed-kinds", default="flat,hnsw,ivfflat,ivfpq", show_default=True, help="Index kinds to time (flat is the reference).")
@click.option("--speed-ef", default="100,128,192,256", show_default=True,
              help="HNSW efSearch values to sweep (the search uses max(efSearch, k=100)).")
@click.option("--speed-nprobe", default="8,16,32,64,128", show_default=True, help="IVF-Flat, IVF-SQ and IVF-PQ nprobe values to sweep.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
@config_options
def retrieval(datasets: tuple[str, ...], only: str, max_users: int, replay_requests: int, prior_fit: str,
              served_prior: str, feedback_fit: str, cold_user_weights: bool, category_term: bool, new_item_terms: bool,
              speed_items: int, speed_dim: int, speed_queries: int,
              speed_kinds: str, speed_ef: str, speed_nprobe: str, no_progress: bool, as_json: bool,
              config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Retrieval quality (two-tower vs popularity vs ALS and item-kNN tuned on the training
    period, oracle on synthetic worlds;
    recall@10/50/100, nDCG@10, cold-start recall@100; at the split boundary and replaying
    test requests at their own time, see docs/retrieval.md) and ANN speed (flat / HNSW / IVF-PQ:
    build time, memory, p50/p99 per query at batch 1 with one faiss thread, recall@100
    vs exact, swept over HNSW efSearch and IVF nprobe, unfiltered and with a live-item filter).

    Writes benchmarks/results/retrieval.json (retrieval_speed.json / retrieval_quality.json
    with --only) plus a timestamped copy.

    \b
    Examples:
      feedrank bench retrieval --data var/world --data var/ml100k --data var/mlsmall --json
      feedrank bench retrieval --data var/ml100k --only quality retrieval.content_encoder=minilm
      feedrank bench retrieval --data var/world --only quality --served-prior two_tower_prior --replay-requests 1000
      feedrank bench retrieval --data var/mlsmall --only quality --replay-requests 0 --prior-fit frozen-tail --cold-user-weights
      feedrank bench retrieval --data var/demo/full/world --only quality --speed-items 0 --no-category-term
      feedrank bench retrieval --data var/demo/full/world --only quality --speed-items 0 --new-item-terms
      feedrank bench retrieval --data var/demo/full/world --only quality --speed-items 0 retrieval.category_estimator=uniform
      feedrank bench retrieval --only speed --speed-items 1000000 --speed-dim 64
      feedrank bench retrieval --only speed --speed-items 200000 --speed-kinds flat,hnsw --speed-ef 100,192
    """
    import json

    from feedrank.bench import write_result
    from feedrank.bench.retrieval import run_quality, run_speed

    kinds = tuple(k.strip() for k in speed_kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in ("flat", "hnsw", "ivfflat", "ivfsq", "ivfpq")]
    if bad or not kinds:
        raise click.BadParameter(f"unknown index kind(s) {bad or speed_kinds!r}: use flat, hnsw, ivfflat, ivfsq, ivfpq", param_hint="--speed-kinds")
    ef, nprobe = _ints(speed_ef), _ints(speed_nprobe)
    if only == "quality" and not datasets:
        raise click.UsageError("--only quality needs at least one --data folder")
    cfg = resolve_config(config_path, overrides)
    result: dict = {"config_overrides": list(overrides), "quality": [], "speed": None}
    if only in ("all", "quality"):
        for d in datasets:
            say(f"quality: {d}")
            result["quality"].append(run_quality(d, cfg, max_users=max_users, show_progress=not no_progress, say=say,
                                                 replay_requests=replay_requests, prior_fit=prior_fit,
                                                 served_prior=served_prior, feedback_fit=feedback_fit,
                                                 cold_user_weights=cold_user_weights, category_term=category_term,
                                                 new_item_terms=new_item_terms))
    if only in ("all", "speed") and speed_items:
        say(f"speed: {speed_items:,} items x {speed_dim}-d")
        result["speed"] = run_speed(speed_items, speed_dim, n_queries=speed_queries, kinds=kinds, ef_search=ef,
                                    nprobe=nprobe, hnsw_m=cfg.retrieval.hnsw_m, ivf_refine=cfg.retrieval.ivf_refine,
                                    seed=cfg.training.seed, say=say)
    path = write_result({"all": "retrieval", "quality": "retrieval_quality", "speed": "retrieval_speed"}[only], result)
    say(f"written {path}")
    if as_json:
        click.echo(json.dumps(result, indent=2))
