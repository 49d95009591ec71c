"""`feedrank train` killed with SIGKILL mid-epoch and run again with the same command
resumes from its step checkpoint and writes the same model, bit for bit, as a run that
never stopped (one thread: the CPU kernels are deterministic)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from feedrank.cli.main import cli
from feedrank.training.checkpoint import load_checkpoint

ARGS = ["--no-progress", "--no-eval", "retrieval.id_buckets=4096", "retrieval.text_buckets=2048",
        "retrieval.batch_size=16", "retrieval.epochs=3", "retrieval.hard_negative_ratio=0.3",
        "ranking.epochs=1", "ranking.batch_size=512", "training.threads=1", "training.checkpoint_every_steps=4"]


@pytest.fixture
def world(tiny_train_world: Path) -> Path:
    return tiny_train_world  # tests/integration/conftest.py


def _train_in_process(world: Path, out: Path, cache: Path) -> dict:
    r = CliRunner().invoke(cli, ["train", "--data", str(world), "--out", str(out), *ARGS,
                                 f"retrieval.content_cache_dir={cache}"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout[r.stdout.index("{"):])


def _bundle_tensors(out: Path) -> dict[str, torch.Tensor]:
    got = {}
    for name in ("two_tower.pt", "ranker.pt", "ranker_small.pt"):
        for k, v in torch.load(out / name, weights_only=True).items():
            got[f"{name}:{k}"] = v
    got["item_vectors"] = torch.from_numpy(np.load(out / "item_vectors.npy"))
    return got


def test_sigkill_mid_epoch_then_same_command_resumes_bit_identical(world: Path, tmp_path: Path):
    cache = tmp_path / "content-cache"
    ref = tmp_path / "ref"
    _train_in_process(world, ref, cache)

    out = tmp_path / "model"
    ck = tmp_path / "model.checkpoints" / "two_tower.ckpt"
    cmd = [sys.executable, "-m", "feedrank.train", "--data", str(world), "--out", str(out), *ARGS,
           f"retrieval.content_cache_dir={cache}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ck.exists(), f"no step checkpoint appeared: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else 'timeout'}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(ck)
    assert state is not None and not state["done"], "the kill landed after two-tower training ended"
    assert not (out / "two_tower.pt").exists()

    summary = _train_in_process(world, out, cache)  # the same command again
    assert summary["resumed"]["two_tower"].startswith("epoch "), summary
    assert not ck.exists(), "step checkpoints are removed once the bundle is written"

    a, b = _bundle_tensors(ref), _bundle_tensors(out)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different
    ra, rb = (json.loads((d / "manifest.json").read_text())["train_reports"] for d in (ref, out))
    for key in ("final_loss", "hard_negatives_shown", "examples"):
        assert ra["two_tower"][key] == rb["two_tower"][key], key
    assert ra["two_tower"]["hard_negatives_shown"] > 0  # the hard-negative path ran and resumed
    assert ra["ranker"]["final_loss"] == rb["ranker"]["final_loss"]
