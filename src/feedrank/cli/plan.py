"""`feedrank plan`: what a deployment of a given size needs, from measured figures."""

from __future__ import annotations

import json
from dataclasses import asdict

import click


def _typical_event_bytes():
    from feedrank.data.eventlog import encode_line
    from feedrank.planning.measured import Figure
    from feedrank.types import Event, EventKind

    rid = "0" * 32
    ev = Event(event_id=f"{rid}:7", ts=1_790_000_000.123, user_id="u123456789", item_id="i123456789",
               kind=EventKind.IMPRESSION, position=6, request_id=rid, propensity=1.0, arm="exp/control")
    return Figure(float(len(encode_line(ev))), "computed: len(encode_line(a typical impression)), "
                  "ids of 10 chars, a 32-hex request id", "any")


@click.command("plan")
@click.option("--users", type=float, required=True, help="Registered users, e.g. 1e9.")
@click.option("--items", type=float, required=True, help="Items in the catalogue, e.g. 1e8.")
@click.option("--dau-fraction", type=float, default=0.5, show_default=True)
@click.option("--feeds-per-user", type=float, default=10.0, show_default=True, help="Feed requests per active user per day.")
@click.option("--k", type=int, default=20, show_default=True, help="Items per feed.")
@click.option("--candidates", type=int, default=1000, show_default=True, help="Candidates ranked per request.")
@click.option("--peak-to-average", type=float, default=3.0, show_default=True)
@click.option("--utilization", type=float, default=0.6, show_default=True, help="Target share of measured capacity.")
@click.option("--slo-ms", type=float, default=50.0, show_default=True, help="p99 a serving node must hold (picks the measured rate).")
@click.option("--embed-dim", type=int, default=32, show_default=True)
@click.option("--pq-bytes", type=int, default=16, show_default=True)
@click.option("--node-memory-gib", type=float, default=24.0, show_default=True)
@click.option("--node-cores", type=int, default=2, show_default=True)
@click.option("--ctr", type=float, default=0.05, show_default=True)
@click.option("--retention-days", type=float, default=90.0, show_default=True)
@click.option("--retrain-interval-hours", type=float, default=24.0, show_default=True)
@click.option("--node-hour-usd", type=float, default=0.10, show_default=True, help="Price of one node per hour.")
@click.option("--storage-gb-month-usd", type=float, default=0.02, show_default=True)
@click.option("--results", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False),
              help="Where the measured figures are read from.")
@click.option("--model", "model_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="A trained bundle whose train reports give training examples/s.")
@click.option("--json", "as_json", is_flag=True)
def plan(users, items, dau_fraction, feeds_per_user, k, candidates, peak_to_average, utilization, slo_ms, embed_dim,
         pq_bytes, node_memory_gib, node_cores, ctr, retention_days, retrain_interval_hours, node_hour_usd,
         storage_gb_month_usd, results, model_dir, as_json) -> None:
    """Capacity plan with the arithmetic shown: peak QPS, per-node throughput and latency
    (measured, machine named), nodes per stage, item-vector memory (raw, PQ), feature
    store size, event volume and storage, training examples and nodes per retrain, and a
    monthly cost. Every figure is a measured number (file named) or an option's value.

    \b
    Examples:
      feedrank plan --users 1e9 --items 1e8 --dau-fraction 0.5 --feeds-per-user 10 --candidates 1000
      feedrank plan --users 1e7 --items 1e6 --model var/demo/full/model --json
    """
    from feedrank.planning.capacity import PlanInputs, plan as make_plan
    from feedrank.planning.measured import Measured

    p = PlanInputs(users=users, items=items, dau_fraction=dau_fraction, feeds_per_user=feeds_per_user, k=k,
                   candidates=candidates, peak_to_average=peak_to_average, utilization=utilization, slo_ms=slo_ms,
                   embed_dim=embed_dim, pq_bytes=pq_bytes, node_memory_gib=node_memory_gib, node_cores=node_cores,
                   ctr=ctr, retention_days=retention_days, retrain_interval_hours=retrain_interval_hours,
                   node_hour_usd=node_hour_usd, storage_gb_month_usd=storage_gb_month_usd)
    m = Measured.read(results, slo_ms, model_dir)
    lines = make_plan(p, m, _typical_event_bytes())
    if as_json:
        click.echo(json.dumps({"inputs": asdict(p), "lines": [asdict(x) for x in lines], "not_measured": m.missing}, indent=2))
        return
    from feedrank.planning.capacity import _fmt

    section = None
    for ln in lines:
        if ln.section != section:
            section = ln.section
            click.echo(f"\n== {section}")
        click.echo(f"  {ln.name:<44} {_fmt(ln.value):>12} {ln.unit:<10} = {ln.formula}")
        for src in ln.sources:
            click.echo(f"  {'':<44} {'':>12} {'':<10}   from {src}")
    machines = sorted({f.machine for f in [*m.feed_stage_ms.values(), m.node_rps, m.ingest_events_per_s] if f is not None})
    click.echo("\nmeasured on: " + ("; ".join(machines) if machines else "nothing measured yet"))
    for miss in m.missing:
        click.echo(f"not measured: {miss}")
