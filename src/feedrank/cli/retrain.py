"""`feedrank retrain`: gated retraining from the live event log (docs/feedback-loop.md)."""

from __future__ import annotations

import json
import re
import time

import click

from feedrank.cli.common import say
from feedrank.cli.loop_options import events_dir_of, registry_options

_EVERY = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")


def parse_every(text: str) -> float:
    """'90s', '10m', '1h', '600' -> seconds."""
    m = _EVERY.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: expected a duration like 90s, 10m or 1h")
    value = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if value <= 0:
        raise click.BadParameter(f"{text!r}: must be > 0")
    return value


@click.command("retrain")
@registry_options(required=True, registry_help="Model registry the server follows (feedrank serve --registry).",
                  data_help="Base dataset the first model was trained on [default: remembered by the champion].")
@click.option("--every", default=None, help="Run on a schedule (e.g. 10m, 1h) until interrupted.")
@click.option("--canary", default=0.0, type=click.FloatRange(0.0, 0.5),
              help="Challenger's traffic share before promotion (0: promote at once).")
@click.option("--experiments", "experiments_file", default=None, type=click.Path(dir_okay=False),
              help="The server's serving.experiments_file (written for a canary).")
@click.option("--max-regression", default=0.005, type=click.FloatRange(0.0, 1.0), show_default=True,
              help="Refuse a challenger whose ranker AUC is lower than the champion's by more.")
@click.option("--max-recall-regression", default=0.02, type=click.FloatRange(0.0, 1.0), show_default=True,
              help="Refuse a challenger whose retrieval recall@100 is lower than the champion's by more.")
@click.option("--rollback-margin", default=0.01, type=click.FloatRange(0.0, 1.0), show_default=True,
              help="Roll back when the challenger's online CTR is below the champion's by more.")
@click.option("--min-impressions", default=2000, type=click.IntRange(1), show_default=True,
              help="Impressions per side before a canary or a promotion is judged.")
@click.option("--min-new-events", default=1, type=click.IntRange(0), show_default=True,
              help="Skip training when fewer events arrived since the champion's cut-off.")
@click.option("--epochs", default=1, type=click.IntRange(1), show_default=True, help="Warm-start fine-tuning epochs.")
@click.option("--drill", type=click.Choice(["inverted-labels"]), default=None,
              help="Train a deliberately broken challenger on inverted click labels: the gate must refuse it "
                   "(needs new events; with a few thousand, add --epochs 3).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print each cycle's result as JSON.")
@click.argument("overrides", nargs=-1, metavar="[SECTION.KEY=VALUE]...")
def retrain(registry_dir: str, events_dir: str | None, base_data: str | None, every: str | None, canary: float,
            experiments_file: str | None, max_regression: float, max_recall_regression: float, rollback_margin: float, min_impressions: int,
            min_new_events: int, epochs: int, drill: str | None, no_progress: bool, as_json: bool,
            overrides: tuple[str, ...]) -> None:
    """Retrain from the live event log: warm-started challenger, offline gate against the
    champion on the newest held-out slice, optional canary through A/B arms, promotion,
    and automatic rollback on an online CTR drop. Serving never stops (the server
    hot-swaps when the registry's current version changes).

    \b
    Examples:
      feedrank retrain --registry var/registry --data var/world
      feedrank retrain --registry var/registry --every 10m --max-regression 0.005
      feedrank retrain --registry var/registry --canary 0.1 --experiments var/experiments.yaml \\
          --rollback-margin 0.01 --min-impressions 5000
      feedrank retrain --registry var/registry --drill inverted-labels   # the gate must refuse it
      feedrank retrain --registry var/registry training.threads=2 retrieval.batch_size=512
    """
    from feedrank.config import apply_overrides, config_from_dict, config_to_dict
    from feedrank.evaluation.abreport import ab_report
    from feedrank.evaluation.offline import evaluate_prepared
    from feedrank.pipeline.retrain import RetrainPolicy, run_cycle

    if canary > 0 and not experiments_file:
        raise click.UsageError("--canary needs --experiments FILE (the file the server reads as serving.experiments_file)")
    events = events_dir_of(registry_dir, events_dir)
    policy = RetrainPolicy(max_regression=max_regression, max_recall_regression=max_recall_regression, canary=canary, rollback_margin=rollback_margin,
                           min_impressions=min_impressions, min_new_events=min_new_events, epochs=epochs,
                           experiments_file=experiments_file)

    def override(cfg):
        return config_from_dict(apply_overrides(config_to_dict(cfg), list(overrides))) if overrides else cfg

    noise = None
    if drill == "inverted-labels":
        def noise(labels, rng):
            return 1 - labels

    period = parse_every(every) if every else None
    while True:
        t0 = time.time()
        try:
            res = run_cycle(registry_dir, events, override, evaluate_prepared, ab_report, policy, base_data,
                            show_progress=not no_progress, say=say, label_noise=noise)
        except Exception as exc:  # on a schedule, one failed cycle must not end the schedule
            if period is None:
                raise
            say(f"retrain cycle failed: {type(exc).__name__}: {exc}; the current model keeps serving")
            res = None
        if res is None:
            pass
        elif as_json:
            click.echo(json.dumps(res.__dict__, default=float))
        else:
            click.echo(f"retrain: {res.action}" + (f" v{res.version}" if res.version else "") + f" ({res.detail}); "
                       f"{res.seconds.get('total', 0):.1f}s")
        if period is None:
            return
        wait = max(0.0, period - (time.time() - t0))
        say(f"next cycle in {wait:.0f}s (Ctrl-C stops; serving is not affected)")
        try:
            time.sleep(wait)
        except KeyboardInterrupt:
            return
