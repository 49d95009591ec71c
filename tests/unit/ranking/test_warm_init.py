"""``train_ranker(init=...)``: a warm start fine-tunes a copy of a trained ranker (every
parameter, its normalisation and feature set kept) and learns what the new labels say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feedrank.config import RankingConfig
from feedrank.evaluation.metrics import auc
from feedrank.ranking.model import logits
from feedrank.ranking.train import train_ranker
from feedrank.training.checkpoint import checkpointing

F = 6


def _cfg(**kw) -> RankingConfig:
    base = dict(hidden=(16,), epochs=3, batch_size=256, lr=1e-2, dwell_loss_weight=0.0, distill_hidden=())
    return RankingConfig(**{**base, **kw})


def _data(n: int, seed: int, sign: float = 1.0):
    rng = np.random.default_rng(seed)
    dense = (rng.standard_normal((n, F)) * 3.0 + 5.0).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-(sign * 2.0 * (dense[:, 0] - 5.0) / 3.0 - 1.0)))
    labels = (rng.random(n) < p).astype(np.int64)
    return dense, rng.integers(0, 3, n), rng.integers(0, 10, n), labels


@pytest.fixture(scope="module")
def champion():
    dense, cat, pos, y = _data(2000, 0)
    torch.manual_seed(0)
    model, _ = train_ranker(_cfg(epochs=2, batch_size=128), dense, cat, pos, y, 3, np.random.default_rng(0),
                            show_progress=False)
    return model


def test_warm_start_copies_then_trains_every_parameter_and_keeps_normalisation(champion):
    before = {k: v.clone() for k, v in champion.state_dict().items()}
    dense, cat, pos, y = _data(1500, 1)
    wide = np.concatenate([dense, np.full((len(dense), 2), 1e6, np.float32)], axis=1)  # newer features: ignored
    tuned, report = train_ranker(_cfg(epochs=1, lr=1e-3), wide, cat, pos, y, 3, np.random.default_rng(1),
                                 show_progress=False, init=champion)
    assert report.examples == 1500 and tuned is not champion and tuned.n_features == F
    assert all(torch.equal(before[k], v) for k, v in champion.state_dict().items())   # init untouched
    moved = {k for k, v in tuned.state_dict().items() if not torch.equal(before[k], v)}
    assert moved == {k for k in before if k not in ("mean", "std") and not k.startswith("head_dwell")}, moved
    assert "position_bias.weight" in moved
    assert torch.equal(tuned.mean, champion.mean) and torch.equal(tuned.std, champion.std)
    # a small fine-tune stays close to where it started: same ranking, nearly
    test, tcat, _, ty = _data(3000, 2)
    assert abs(auc(ty, logits(tuned, test, tcat)) - auc(ty, logits(champion, test, tcat))) < 0.02


def test_warm_start_learns_inverted_labels(champion):
    """The new labels say the opposite of what the champion learned: the warm start follows them."""
    test, tcat, _, ty = _data(3000, 2)
    assert auc(ty, logits(champion, test, tcat)) > 0.75
    dense, cat, pos, y = _data(1000, 3, sign=-1.0)
    torch.manual_seed(0)
    tuned, _ = train_ranker(_cfg(epochs=2, batch_size=64, lr=2e-2), dense, cat, pos, y, 3, np.random.default_rng(3),
                            show_progress=False, init=champion)
    assert auc(ty, logits(tuned, test, tcat)) < 0.4


def test_warm_start_rejects_data_that_does_not_fit(champion):
    dense, cat, pos, y = _data(200, 4)
    with pytest.raises(ValueError, match="dense features"):
        train_ranker(_cfg(), dense[:, :3], cat, pos, y, 3, np.random.default_rng(0), show_progress=False, init=champion)
    with pytest.raises(ValueError, match="categories"):
        train_ranker(_cfg(), dense, cat + 5, pos, y, 8, np.random.default_rng(0), show_progress=False, init=champion)
    with pytest.raises(ValueError, match="init_examination"):
        train_ranker(_cfg(), dense, cat, pos, y, 3, np.random.default_rng(0), show_progress=False, init=champion,
                     init_examination=np.ones(10))


def test_warm_start_never_resumes_a_cold_runs_checkpoint(champion, tmp_path):
    dense, cat, pos, y = _data(600, 5)
    with checkpointing(tmp_path, every_steps=0):
        cold, _ = train_ranker(_cfg(epochs=1), dense, cat, pos, y, 3, np.random.default_rng(5), show_progress=False)
        warm, rep = train_ranker(_cfg(epochs=1), dense, cat, pos, y, 3, np.random.default_rng(5), show_progress=False,
                                 init=champion)
        again, rep2 = train_ranker(_cfg(epochs=1), dense, cat, pos, y, 3, np.random.default_rng(5), show_progress=False,
                                   init=champion)
    assert rep.resumed_from == ""            # the cold run's finished checkpoint belongs to another run
    assert rep2.resumed_from.endswith("(finished)")   # the same warm run again: resumed, same weights
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in warm.state_dict().items())
    assert not torch.equal(cold.head_click.weight, warm.head_click.weight)
