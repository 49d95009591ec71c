"""`feedrank ab ...`: A/B experiment assignment and reports from the event log."""

from __future__ import annotations

import json

import click


@click.group("ab")
def ab_group() -> None:
    """A/B experiments (docs/experiments.md): see who gets which arm, and the results.

    \b
    Examples:
      feedrank ab assign --experiments experiments.yaml u1 u2 u3
      feedrank ab report --events var/demo/full/events --experiment fresh-feed
    """


@ab_group.command("assign")
@click.option("--experiments", "experiments_file", required=True, type=click.Path(exists=True, dir_okay=False))
@click.argument("users", nargs=-1, required=True)
def assign_cmd(experiments_file: str, users: tuple[str, ...]) -> None:
    """Validate an experiments file and print each user's arm (deterministic).

    \b
    Example:
      feedrank ab assign --experiments experiments.yaml u1 u2 brand-new-user
    """
    import yaml

    from feedrank.serving.experiments import assign, parse_experiments

    exps = parse_experiments(yaml.safe_load(open(experiments_file).read()), experiments_file)
    for u in users:
        hit = assign(exps, u)
        click.echo(f"{u}\t{'-' if hit is None else hit[0].name + '/' + hit[1].name}")


@ab_group.command("report")
@click.option("--events", "events_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Event log folder.")
@click.option("--experiment", default=None, help="Only this experiment's arms.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--items", "items_path", default=None, type=click.Path(exists=True),
              help="items.parquet (or a dataset / model folder holding one): adds creator reach per arm.")
def report_cmd(events_dir: str, experiment: str | None, as_json: bool, items_path: str | None) -> None:
    """Per arm: users, requests, impressions, clicks, CTR with a 95% interval (delta
    method over requests), dwell with an interval, and the difference to control with
    its interval and a two-sided z-test p-value. Then online metrics per arm: sessions
    (30-min gap), feeds and minutes per session, dwell per session, return rate, creator
    reach (with --items).

    \b
    Examples:
      feedrank ab report --events var/demo/full/events
      feedrank ab report --events var/events --experiment fresh-feed --json
      feedrank ab report --events var/demo/full/events --items var/demo/full/model
    """
    from feedrank.data.eventlog import read_partitions
    from feedrank.evaluation.abreport import ab_report

    creator_of = None
    if items_path:
        from pathlib import Path

        import pyarrow.parquet as pq

        p = Path(items_path)
        p = p / "items.parquet" if p.is_dir() else p
        t = pq.read_table(p, columns=["item_id", "creator"])
        creator_of = dict(zip(t.column("item_id").to_pylist(), t.column("creator").to_pylist()))
    report = ab_report(read_partitions(events_dir), experiment, creator_of=creator_of)  # every worker's partition
    if as_json:
        click.echo(json.dumps(report, indent=2, default=float))
        return
    click.echo(f"control: {report['control']}")
    click.echo(f"{'arm':<28} {'users':>7} {'impr':>8} {'clicks':>7} {'CTR':>8} {'95% CI':>19} {'diff':>8} {'p':>7}")
    for a in report["arms"]:
        vs = a["vs_control"] or {}
        ci = f"[{a['ctr_ci95'][0]:.4f},{a['ctr_ci95'][1]:.4f}]"
        diff = f"{vs['diff']:+.4f}" if vs else ""
        p = f"{vs['p_value']:.3f}" if vs else ""
        click.echo(f"{a['arm']:<28} {a['users']:>7} {a['impressions']:>8} {a['clicks']:>7} {a['ctr']:>8.4f} {ci:>19} {diff:>8} {p:>7}")
    click.echo(f"\n{'arm':<28} {'sessions':>8} {'feeds/s.':>8} {'min/s.':>7} {'dwell s/s.':>10} {'return':>7} {'creators':>8}")
    for a in report["arms"]:
        o = a.get("online") or {}
        cr = o.get("creators_reached", "")
        click.echo(f"{a['arm']:<28} {o.get('sessions', 0):>8} {o.get('requests_per_session', 0):>8.2f} "
                   f"{o.get('session_minutes', 0):>7.2f} {o.get('dwell_s_per_session', 0):>10.1f} {o.get('return_rate', 0):>7.1%} {cr:>8}")
