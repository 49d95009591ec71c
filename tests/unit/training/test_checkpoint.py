"""Step checkpoints: atomic pickle-free files, RNG round trips, and a TrainLoop that is
interrupted mid-epoch and resumed ends bit-identical to one that never stopped."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from feedrank.training import checkpoint as ckpt
from feedrank.training.loop import TrainLoop


def test_save_atomic_round_trips_without_pickle_and_leaves_no_temp(tmp_path):
    g = np.random.default_rng(7)
    g.random(3)
    payload = {"format": ckpt.FORMAT, "recipe": "x", "fingerprint": "f", "w": torch.arange(6.0).view(2, 3),
               "rng": ckpt.global_rng_state(), "gen": ckpt.generator_state(g), "nan": float("nan")}
    path = tmp_path / "x.ckpt"
    ckpt.save_atomic(path, payload)
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]
    back = ckpt.load_checkpoint(path)
    assert torch.equal(back["w"], payload["w"])
    h = np.random.default_rng(0)
    ckpt.set_generator_state(h, back["gen"])
    assert np.array_equal(h.random(5), g.random(5))


def test_global_rng_state_restores_torch_numpy_and_python():
    state = ckpt.global_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_global_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_load_ignores_missing_and_foreign_files(tmp_path):
    assert ckpt.load_checkpoint(tmp_path / "none.ckpt") is None
    torch.save({"something": 1}, tmp_path / "other.ckpt")
    assert ckpt.load_checkpoint(tmp_path / "other.ckpt") is None


def test_fingerprint_changes_with_data_and_meta():
    a = np.arange(10)
    f = ckpt.fingerprint({"lr": 0.1}, a)
    assert f == ckpt.fingerprint({"lr": 0.1}, a.copy())
    assert f != ckpt.fingerprint({"lr": 0.2}, a)
    assert f != ckpt.fingerprint({"lr": 0.1}, a + 1)


def test_interval_must_be_non_negative(tmp_path):
    with pytest.raises(ValueError, match="every_steps"):
        with ckpt.checkpointing(tmp_path, -1):
            pass


class Stop(Exception):
    pass


def _train(x: np.ndarray, y: np.ndarray, stop_at: int | None = None, epochs: int = 3) -> tuple[torch.nn.Module, float, str]:
    """A small MLP regression through TrainLoop; raises Stop after ``stop_at`` steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loop = TrainLoop("toy", model, {"adam": opt}, np.random.default_rng(3), meta={"lr": 0.01}, arrays=(x, y),
                     epochs=epochs, show_progress=False)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    done = 0
    for epoch in loop.epochs():
        perm = loop.epoch_rng(epoch).permutation(len(x))
        batches = loop.shard([perm[s : s + 16] for s in range(0, len(x), 16)])
        for _, b in loop.steps(batches):
            noise = torch.randn(len(b), 1) * 0.01  # global torch RNG: restored on resume
            loop.backward_step(torch.nn.functional.mse_loss(model(xt[b]) + noise, yt[b]))
            done += 1
            if stop_at is not None and done == stop_at:
                raise Stop
    return model, loop.finish(), loop.resumed


def test_interrupted_loop_resumes_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], dtype=np.float32)).astype(np.float32)
    ref, ref_loss, _ = _train(x, y)  # 13 steps per epoch, 39 in all
    with ckpt.checkpointing(tmp_path, every_steps=5):
        with pytest.raises(Stop):
            _train(x, y, stop_at=17)  # epoch 1, mid-epoch; last checkpoint after step 15
        state = ckpt.load_checkpoint(tmp_path / "toy.ckpt")
        assert (state["epoch"], state["step"], state["done"]) == (1, 2, False)
        got, got_loss, resumed = _train(x, y)
        assert resumed == "epoch 1 step 2"
        assert ckpt.load_checkpoint(tmp_path / "toy.ckpt")["done"] is True
        again, _, resumed2 = _train(x, y)  # a finished recipe runs no steps
        assert resumed2.endswith("(finished)")
    for a, b, c in zip(ref.state_dict().values(), got.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert got_loss == ref_loss


def test_checkpoint_of_other_data_is_not_resumed(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = x[:, :1].copy()
    with ckpt.checkpointing(tmp_path, every_steps=1):
        _train(x, y, epochs=1)
        _, _, resumed = _train(x, y + 1.0, epochs=1)
    assert resumed == ""
    with ckpt.checkpointing(tmp_path, every_steps=1, resume=False):
        _, _, resumed = _train(x, y + 1.0, epochs=1)
    assert resumed == ""
