"""Training recipe for the two-tower model: in-batch sampled softmax with logQ correction.

Setup -> train -> return; written out in full, no inheritance. Examples are clicks: the
user's history strictly before the click predicts the clicked item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from feedrank.config import RetrievalConfig
from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import ClickLog
from feedrank.retrieval.encode import item_inputs, user_inputs
from feedrank.retrieval.two_tower import TwoTower, TwoTowerDims, build_two_tower
from feedrank.training.common import progress


@dataclass(frozen=True)
class RetrievalTrainReport:
    examples: int
    epochs: int
    final_loss: float
    seconds: float


def two_tower_dims(cfg: RetrievalConfig, n_categories: int, n_subcategories: int) -> TwoTowerDims:
    return TwoTowerDims(
        id_buckets=cfg.id_buckets,
        text_buckets=cfg.text_buckets,
        n_categories=n_categories,
        n_subcategories=n_subcategories,
        embed_dim=cfg.embed_dim,
        out_dim=cfg.out_dim,
        history_len=cfg.history_len,
    )


def train_two_tower(
    cfg: RetrievalConfig,
    catalog: ItemCatalog,
    clicks: ClickLog,
    n_categories: int,
    n_subcategories: int,
    rng: np.random.Generator,
    show_progress: bool = True,
) -> tuple[TwoTower, RetrievalTrainReport]:
    """Train on every click in ``clicks`` (capped at ``cfg.max_train_examples``, newest kept)."""
    import time

    t0 = time.perf_counter()
    n = len(clicks.items)
    if n < 2:
        raise ValueError(f"two-tower training needs at least 2 clicks, got {n}")
    sel = np.arange(n)
    if n > cfg.max_train_examples:
        newest = np.argsort(clicks.ts, kind="stable")[-cfg.max_train_examples :]
        sel = np.sort(newest)
    hist = clicks.histories(clicks.user_codes[sel], clicks.ts[sel], cfg.history_len)
    pos = clicks.items[sel]
    ts = clicks.ts[sel]
    # logQ: log of each item's share of training positives (its in-batch sampling rate).
    freq = np.bincount(pos, minlength=len(catalog)).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(freq, 1.0) / len(pos)).astype(np.float32))

    model = build_two_tower(two_tower_dims(cfg, n_categories, n_subcategories))
    opt_dense = torch.optim.Adam(model.dense_parameters(), lr=cfg.lr)
    opt_sparse = torch.optim.SparseAdam(model.sparse_parameters(), lr=cfg.lr)
    bs = min(cfg.batch_size, len(pos))
    steps = len(pos) // bs
    last = float("nan")
    for epoch in range(cfg.epochs):
        model.train()
        perm = rng.permutation(len(pos))
        bar = progress(range(steps), desc=f"two-tower epoch {epoch + 1}/{cfg.epochs}", enabled=show_progress, unit="batch")
        running = 0.0
        for step in bar:
            b = perm[step * bs : (step + 1) * bs]
            items_b = pos[b]
            u = model.user(*user_inputs(catalog, hist[b], ts[b], n_categories))
            v = model.item(*item_inputs(catalog, items_b))
            logits = u @ v.T / cfg.temperature - log_q[torch.from_numpy(items_b)][None, :]
            same = torch.from_numpy(items_b[:, None] == items_b[None, :])
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, -1e9)
            loss = F.cross_entropy(logits, torch.arange(len(b)))
            opt_dense.zero_grad(set_to_none=True)
            opt_sparse.zero_grad(set_to_none=True)
            loss.backward()
            opt_dense.step()
            opt_sparse.step()
            running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{running:.3f}")
        last = running
    return model, RetrievalTrainReport(examples=len(pos), epochs=cfg.epochs, final_loss=float(last), seconds=time.perf_counter() - t0)
