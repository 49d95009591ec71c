"""`feedrank train`: train every stage from a dataset folder into one model bundle.

One process by default; ``--nproc N`` re-launches the same command under torchrun
(``python -m torch.distributed.run ... -m feedrank.train``) for data-parallel training,
``--max-restarts R`` restarting all workers (from the last step checkpoint) when one dies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from feedrank.cli.common import config_options, resolve_config, say


def checkpoint_dir_for(out_dir: str | Path) -> Path:
    """Where a bundle's training checkpoints live: ``<out>.checkpoints`` next to it."""
    out = Path(out_dir)
    return out.parent / f"{out.name}.checkpoints"


def torchrun_command(nproc: int, max_restarts: int, argv: list[str]) -> list[str]:
    """The torchrun command line that runs ``python -m feedrank.train ARGV`` on ``nproc``
    local workers (a standalone rendezvous on a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "feedrank.train", *argv]


def _quiet(_msg: str) -> None:
    return None


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Canonical dataset folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Model bundle folder to write (replaced atomically).")
@click.option("--no-eval", is_flag=True, help="Skip the offline evaluation on the test split.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--fresh", is_flag=True, help="Ignore step checkpoints of an interrupted run (default: resume from them).")
@click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Data-parallel worker processes (launched with torchrun; gloo on CPU).")
@click.option("--max-restarts", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="With --nproc: restart the workers this many times when one dies; they resume from the last checkpoint.")
@config_options
def train(data_dir: str, out_dir: str, no_eval: bool, no_progress: bool, fresh: bool, nproc: int, max_restarts: int,
          config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Train the two-tower retriever, ANN index and ranker; write a model bundle.

    The dataset is split by time (split.test_fraction); models learn from the train side
    and the bundle records their metrics on the test side.

    Training is resumable: every recipe writes a step checkpoint to OUT.checkpoints/ every
    training.checkpoint_every_steps steps (and at each epoch end); the same command run
    again after a crash or kill continues from it and ends with the same model. The step
    checkpoints are removed once the bundle is written.

    \b
    Examples:
      feedrank train --data var/world --out var/model
      feedrank train --data var/mind --out var/mind-model ranking.epochs=3 retrieval.index=hnsw
      feedrank train --data var/world --out var/model --config configs/default.yaml
      feedrank train --data var/world --out var/model training.checkpoint_every_steps=100
      feedrank train --data var/world --out var/model --nproc 2 training.threads=1
      feedrank train --data var/world --out var/model --nproc 2 --max-restarts 3
      torchrun --nproc_per_node 2 -m feedrank.train --data var/world --out var/model
    """
    cfg = resolve_config(config_path, overrides)  # fail here, before any worker starts
    if max_restarts and nproc == 1:
        raise click.UsageError("--max-restarts needs --nproc >= 2 (torchrun restarts workers); a single process "
                               "resumes when the same command is run again")
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        argv = ["--data", data_dir, "--out", out_dir]
        argv += ["--no-eval"] * no_eval + ["--no-progress"] * no_progress + ["--fresh"] * fresh
        argv += ["--config", config_path] if config_path else []
        argv += list(overrides)
        cmd = torchrun_command(nproc, max_restarts, argv)
        say("launching: " + " ".join(cmd))
        rc = subprocess.call(cmd)
        if rc != 0:
            raise click.ClickException(f"distributed training failed (torchrun exit status {rc})")
        return

    from feedrank.evaluation.offline import evaluate_prepared
    from feedrank.pipeline.build import train_model
    from feedrank.training import distributed as dist
    from feedrank.training.checkpoint import checkpointing, clear_step_checkpoints

    info = dist.init_from_env()
    main = info.rank == 0
    ckpt_dir = checkpoint_dir_for(out_dir)
    try:
        if info.world_size > 1:
            restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            say(f"rank {info.rank}/{info.world_size} joined (backend {info.backend}, pid {os.getpid()}, restart {restart})")
        with checkpointing(ckpt_dir, cfg.training.checkpoint_every_steps, resume=not fresh):
            art = train_model(data_dir, out_dir, cfg, show_progress=main and not no_progress,
                              evaluator=None if no_eval else evaluate_prepared, say=say if main else _quiet)
        # every rank leaves together: a rank that tore its process group down while rank 0
        # was still evaluating and writing the bundle was seen to abort in gloo's teardown
        dist.barrier()
        if not main:
            return
        cleared = clear_step_checkpoints(ckpt_dir)
        if cleared:
            say(f"removed {cleared} step checkpoint(s) from {ckpt_dir}")
        reports = art.info.get("train_reports", {})
        summary = {"model": out_dir, "version": art.version, "metrics": art.info.get("metrics"),
                   "world_size": info.world_size,
                   "resumed": {k: (v or {}).get("resumed_from", "") for k, v in reports.items() if isinstance(v, dict)}}
        if summary["metrics"]:
            summary["metrics"] = {k: summary["metrics"].get(k) for k in ("retrieval", "ranking")}
        click.echo(json.dumps(summary, indent=2))
    finally:
        dist.shutdown()
