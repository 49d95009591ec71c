"""`python -m feedrank.bench.step_profile`: the two-tower step split into its pieces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedrank.bench.step_profile import main


def test_one_process_profile_reports_every_piece(tiny_train_world: Path, capsys):
    main(["--data", str(tiny_train_world), "--steps", "3", "--warmup", "1", "--batch", "16"])
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["processes"] == 1 and got["rank"] == 0 and got["batch_per_process"] == 16 and got["steps"] == 3
    pieces = ("data", "forward", "backward", "dense_adam", "sparse_adam", "exchange", "wait")
    assert all(got[k] >= 0 for k in pieces) and got["exchange"] == 0 and got["wait"] == 0  # one process: no exchange
    assert sum(got[k] for k in pieces) <= got["step_ms"] * 1.01 + 0.01
    assert got["forward"] > 0 and got["backward"] > 0 and got["examples_per_s"] > 0
    assert len(got["sparse_rows"]) == 3 and all(r > 0 for r in got["sparse_rows"])  # item ids, creators, title words


def test_bad_arguments_are_refused(tiny_train_world: Path):
    with pytest.raises(SystemExit):
        main(["--data", str(tiny_train_world), "--steps", "0"])


def test_independent_runs_side_by_side(tiny_train_world: Path):
    """--independent: two separate one-process trainings (no process group), one line each."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "feedrank.bench.step_profile", "--data", str(tiny_train_world),
                          "--nproc", "2", "--independent", "--steps", "3", "--warmup", "1", "--batch", "16",
                          "--sparse-optimizer", "torch"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(x) for x in out.stdout.strip().splitlines() if x.startswith("{")]
    assert len(lines) == 2
    for got in lines:  # each is a world of one: no exchange
        assert got["processes"] == 1 and got["rank"] == 0 and got["exchange"] == 0 and got["steps"] == 3
        assert got["sparse_optimizer"] == "torch" and got["forward"] > 0 and got["sparse_adam"] > 0
    with pytest.raises(SystemExit):
        main(["--data", str(tiny_train_world), "--independent"])  # needs --nproc >= 2
