"""torch.distributed helpers: world-size-1 defaults, sharding, the sparse gradient merge,
and the torchrun command `feedrank train --nproc` runs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from feedrank.cli.train import checkpoint_dir_for, torchrun_command
from feedrank.training import distributed as dist


def test_outside_torchrun_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = dist.init_from_env()
    assert (info.rank, info.world_size, info.backend) == (0, 1, "")
    assert dist.is_main() and dist.world_size() == 1 and dist.broadcast_int(7) == 7
    assert dist.all_reduce_mean([1.0, 3.0]) == [1.0, 3.0]
    extras = torch.tensor([2.5])
    assert dist.average_gradients([], [], extras) is extras  # world size 1: untouched


def test_shard_is_disjoint_and_covers_everything():
    idx = np.arange(11)
    parts = [dist.shard(idx, 3, r) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))
    assert all(len(set(a) & set(b)) == 0 for i, a in enumerate(parts) for b in parts[i + 1 :])


def test_sparse_rows_split_back_to_the_right_table():
    """All tables' rows travel in one buffer; each table gets its own rows back (one rank)."""
    a = torch.nn.Embedding(10, 4, sparse=True)
    b = torch.nn.Embedding(6, 4, sparse=True)
    c = torch.nn.Embedding(5, 4, sparse=True)  # no gradient this step
    (a(torch.tensor([1, 1, 9])).sum() * 2 + b(torch.tensor([0, 5])).sum()).backward()
    want_a, want_b = a.weight.grad.to_dense(), b.weight.grad.to_dense()
    idx, val, counts = dist._local_rows([a.weight, b.weight, c.weight], 4)
    assert counts == [2, 2, 0] and idx.dtype == torch.int32 and val.shape == (4, 4)
    dist._set_sparse([a.weight, b.weight, c.weight], [idx], [val], [counts], 1.0)
    assert torch.equal(a.weight.grad.to_dense(), want_a) and torch.equal(b.weight.grad.to_dense(), want_b)
    assert a.weight.grad.is_sparse and b.weight.grad.is_sparse and c.weight.grad is None


def test_nproc_runs_the_same_command_under_torchrun(tmp_path):
    cmd = torchrun_command(2, 3, ["--data", "w", "--out", "m", "retrieval.epochs=1"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and "--max-restarts=3" in cmd and "--standalone" in cmd
    assert cmd[cmd.index("-m", 3) : cmd.index("-m", 3) + 2] == ["-m", "feedrank.train"]
    assert cmd[-1] == "retrieval.epochs=1"
    assert checkpoint_dir_for(tmp_path / "model") == tmp_path / "model.checkpoints"


def test_loop_refuses_fewer_batches_than_ranks():
    from feedrank.training.loop import TrainLoop

    m = torch.nn.Linear(2, 1)
    loop = TrainLoop("t", m, {"sgd": torch.optim.SGD(m.parameters(), lr=0.1)}, np.random.default_rng(0), {}, show_progress=False)
    loop.world = 2
    with pytest.raises(ValueError, match="cannot be shared by 2 ranks"):
        loop.shard([np.arange(3)])
