"""`feedrank bench scale`: memory, index build, training examples/s and feed p99 by world size."""

from __future__ import annotations

import click

from feedrank.cli.common import say


def _ints(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 100:
        raise click.BadParameter(f"expected sizes >= 100, got {text!r}")
    return values


@click.command("scale")
@click.option("--sizes", default="10000", show_default=True,
              help="World sizes, comma-separated (e.g. 10000,100000,1000000).")
@click.option("--vary", type=click.Choice(["both", "items", "users"]), default="both", show_default=True,
              help="both: users = items = size; items: users fixed at --base; users: items fixed at --base.")
@click.option("--base", default=10_000, show_default=True, type=click.IntRange(100), help="The fixed axis with --vary items|users.")
@click.option("--procs", default="1,2", show_default=True, help="Training process counts (gloo, one thread each).")
@click.option("--train-examples", default=100_000, show_default=True, type=click.IntRange(100),
              help="Cap on two-tower training clicks (newest kept) for the examples/s runs.")
@click.option("--train-seconds", default=20.0, show_default=True, type=click.FloatRange(1.0),
              help="Steady-state seconds of each training measurement (after a >= 3 s calibration/warm-up run).")
@click.option("--feed-requests", default=300, show_default=True, type=click.IntRange(10), help="In-process feed requests timed.")
@click.option("--index-repeats", default=1, show_default=True, type=click.IntRange(1, 20), help="Index builds timed (best kept).")
@click.option("--workdir", default="var/bench/scale", show_default=True, type=click.Path(file_okay=False),
              help="Worlds and models are built here once per size and reused.")
@click.option("--no-train", is_flag=True, help="Skip the training measurements (memory, index and latency only).")
@click.option("--result-name", default="scale", show_default=True,
              help="Results file name (benchmarks/results/NAME.json); `feedrank plan` reads 'scale'.")
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
def scale(sizes: str, vary: str, base: int, procs: str, train_examples: int, train_seconds: float, feed_requests: int,
          index_repeats: int, workdir: str, no_train: bool, result_name: str, as_json: bool) -> None:
    """How cost grows with work: for each world size, serving memory (RSS of the loaded
    serving stack in a fresh process), ANN index build time, two-tower training examples/s
    with 1 and 2 processes (one thread each, gloo; each run lasts --train-seconds after a
    calibration run) with rank 0's exchange and waiting shares and compute per step, and
    feed p50/p99 in process. For timing on a shared machine run it at a high priority in
    its own session (see docs/training-at-scale.md). Writes benchmarks/results/scale.json
    (plus a timestamped copy).

    Worlds and models (2 days, 1 epoch) are built under --workdir once and reused; the
    1M point takes a long time on a small machine.

    \b
    Examples:
      feedrank bench scale --json
      feedrank bench scale --sizes 10000,100000,1000000 --json
      feedrank bench scale --sizes 10000,100000 --vary items --base 10000 --no-train --result-name scale_items
      feedrank bench scale --sizes 10000 --procs 1,2 --train-examples 50000
      feedrank bench scale --sizes 100000 --train-seconds 60 --json
    """
    import json
    from pathlib import Path

    from feedrank.bench import write_result
    from feedrank.bench.scale import run_scale_bench

    if not result_name.replace("_", "").replace("-", "").isalnum():
        raise click.BadParameter(f"--result-name must be letters, digits, - or _, got {result_name!r}")
    size_list = _ints(sizes)
    proc_list = () if no_train else tuple(_ints_small(procs))
    result = run_scale_bench(size_list, Path(workdir), vary=vary, base=base, procs=proc_list,
                             train_examples=train_examples, feed_requests=feed_requests, index_repeats=index_repeats,
                             train_seconds=train_seconds, say=say)
    path = write_result(result_name, result)
    say(f"written {path}")
    if as_json:
        click.echo(json.dumps(result, indent=2))


def _ints_small(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1 or max(values) > 64:
        raise click.BadParameter(f"expected process counts in 1..64, got {text!r}")
    return values
