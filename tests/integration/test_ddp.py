"""Data-parallel training: `feedrank train --nproc 2 --max-restarts 1` runs two gloo CPU
workers under torchrun; one worker is killed with SIGKILL mid-training, torchrun restarts
both, they resume from rank 0's last step checkpoint, and rank 0 writes a bundle that
loads and evaluates."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from feedrank.pipeline.artifacts import load_artifacts

ARGS = ["--no-progress", "retrieval.id_buckets=4096", "retrieval.text_buckets=2048", "retrieval.batch_size=16",
        "retrieval.epochs=3", "ranking.epochs=1", "ranking.batch_size=256", "training.threads=1",
        "training.checkpoint_every_steps=3"]


@pytest.fixture
def world(tiny_train_world: Path) -> Path:
    return tiny_train_world  # tests/integration/conftest.py


def _pids_with(tag: str, rank: str) -> list[int]:
    """Processes of this user whose environment has FEEDRANK_TEST_TAG=tag and RANK=rank."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FEEDRANK_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            found.append(int(d.name))
    return found


def test_two_gloo_workers_train_survive_a_killed_worker_and_write_one_bundle(world: Path, tmp_path: Path):
    out = tmp_path / "model"
    ck = tmp_path / "model.checkpoints" / "two_tower.ckpt"
    tag = uuid.uuid4().hex
    env = {**os.environ, "FEEDRANK_TEST_TAG": tag, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "feedrank.cli.main", "train", "--data", str(world), "--out", str(out), "--nproc", "2",
           "--max-restarts", "1", *ARGS, f"retrieval.content_cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 150
        while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        pids = _pids_with(tag, "1")
        if ck.exists() and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert killed is not None, "rank 1 was not found while training"
    # both ranks joined, twice (first attempt, then torchrun's restart after the kill)
    for restart in ("0", "1"):
        for rank in ("0/2", "1/2"):
            assert f"rank {rank} joined (backend gloo" in stderr and f"restart {restart})" in stderr, stderr[-3000:]
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["world_size"] == 2
    assert summary["resumed"]["two_tower"].startswith("epoch "), (summary, stderr[-3000:])  # the restart resumed
    manifest = json.loads((out / "manifest.json").read_text())
    tt = manifest["train_reports"]["two_tower"]
    assert tt["world_size"] == 2 and math.isfinite(tt["final_loss"]) and tt["comm_seconds"] > 0
    assert manifest["train_reports"]["ranker"]["world_size"] == 2
    assert math.isfinite(manifest["train_reports"]["ranker"]["final_loss"])
    # rank 0 alone wrote: one bundle, one set of epoch files, no temp files left behind
    ckdir = ck.parent
    assert sorted(p.name for p in ckdir.glob("two_tower-epoch*.pt")) == [f"two_tower-epoch{e}.pt" for e in (1, 2, 3)]
    assert not list(ckdir.glob(".*tmp*")) and not list(ckdir.glob("*.ckpt")), list(ckdir.iterdir())
    art = load_artifacts(out)
    assert art.ranker is not None and art.item_vectors.shape[0] == len(art.catalog)
    metrics = summary["metrics"]
    assert 0.0 <= metrics["retrieval"]["recall@100"] <= 1.0 and math.isfinite(metrics["ranking"]["auc"])
