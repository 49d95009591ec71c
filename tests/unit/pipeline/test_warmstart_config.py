"""The warm start's fine-tuning settings: learning rates scaled, and enough optimizer steps
per epoch on a small increment (pure functions of pipeline/warmstart.py)."""

from __future__ import annotations

import math

import pytest

from feedrank.config import load_config
from feedrank.pipeline.warmstart import (
    LR_SCALE,
    MIN_RANKER_BATCH,
    MIN_RANKER_STEPS,
    fine_tune_batch_size,
    warm_configs,
)


@pytest.mark.parametrize("n_rows", [100, 1000, 4280, 20_000, 65_536, 540_000])
def test_an_epoch_takes_enough_steps_and_batches_stay_in_bounds(n_rows):
    bs = fine_tune_batch_size(n_rows, 1024)
    assert min(MIN_RANKER_BATCH, 1024) <= bs <= 1024
    if bs > MIN_RANKER_BATCH:     # not at the floor: the step count is met
        assert math.ceil(n_rows / bs) >= MIN_RANKER_STEPS
    assert fine_tune_batch_size(n_rows, 16) == 16          # never above the configured batch


def test_large_increments_keep_the_configured_batch():
    assert fine_tune_batch_size(1024 * MIN_RANKER_STEPS, 1024) == 1024
    assert fine_tune_batch_size(4280, 1024) == 4280 // MIN_RANKER_STEPS


def test_warm_configs_scale_the_learning_rates_only():
    cfg = load_config(None, ["ranking.batch_size=512"])
    rc, kc = warm_configs(cfg, 3)
    assert (rc.epochs, kc.epochs) == (3, 3)
    assert rc.lr == pytest.approx(cfg.retrieval.lr * LR_SCALE) and kc.lr == pytest.approx(cfg.ranking.lr * LR_SCALE)
    assert kc.batch_size == 512 and rc.batch_size == cfg.retrieval.batch_size and kc.loss == cfg.ranking.loss
    with pytest.raises(ValueError, match="epochs"):
        warm_configs(cfg, 0)
    with pytest.raises(ValueError, match="lr_scale"):
        warm_configs(cfg, 1, lr_scale=0.0)
