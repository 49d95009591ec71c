"""Training recipe for the ranker: pointwise BCE on logged impressions (click labels)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from feedrank.config import RankingConfig
from feedrank.ranking.model import Ranker, build_ranker
from feedrank.training.common import progress


@dataclass(frozen=True)
class RankingTrainReport:
    examples: int
    positives: int
    epochs: int
    final_loss: float
    seconds: float


def train_ranker(
    cfg: RankingConfig,
    dense: np.ndarray,
    category: np.ndarray,
    position: np.ndarray,
    labels: np.ndarray,
    n_categories: int,
    rng: np.random.Generator,
    show_progress: bool = True,
) -> tuple[Ranker, RankingTrainReport]:
    """dense (N, F) float32, category/position (N,) int64, labels (N,) {0,1}."""
    t0 = time.perf_counter()
    n = len(labels)
    if n == 0:
        raise ValueError("ranker training needs impressions, got none")
    model = build_ranker(n_categories, cfg.hidden)
    x = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    model.set_normalisation(x.mean(0), x.std(0))
    cat = torch.from_numpy(category.astype(np.int64))
    pos = torch.from_numpy(position.astype(np.int64))
    y = torch.from_numpy(labels.astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bs = min(cfg.batch_size, n)
    steps = max(1, n // bs)
    running = float("nan")
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(n))
        bar = progress(range(steps), desc=f"ranker epoch {epoch + 1}/{cfg.epochs}", enabled=show_progress, unit="batch")
        for step in bar:
            b = perm[step * bs : (step + 1) * bs]
            loss = F.binary_cross_entropy_with_logits(model(x[b], cat[b], pos[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running = loss.item() if step == 0 and epoch == 0 else 0.98 * running + 0.02 * loss.item()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{running:.4f}")
    model.eval()
    return model, RankingTrainReport(n, int(labels.sum()), cfg.epochs, float(running), time.perf_counter() - t0)
