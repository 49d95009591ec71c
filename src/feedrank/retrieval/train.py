"""Training recipe for the two-tower model: sampled softmax with logQ correction, a
temperature, and hard negatives; a checkpoint after every epoch.

Setup -> train -> checkpoint -> return; written out in full, no inheritance. Examples are
clicks: the user's history strictly before the click predicts the clicked item.

Loss per click i (B clicks in a batch, u_i user vector, v_j item vectors, T temperature):

    logits_ij = u_i . v_j / T - log q_j          in-batch negatives, q_j = item j's share of
                                                 training positives (logQ correction)
    logit_ih  = u_i . v_h(i) / T                 hard negative h(i), for a share
                                                 ``hard_negative_ratio`` of the rows
    loss = cross_entropy([logits_i, logit_ih], target = i)

Hard negatives are, mixed by ``hard_negative_mix``: items the user was shown near the
time of the click and did not click (when the data has impressions), and items the current
model ranks between ``mined_rank_min`` and ``mined_rank_max`` for that user (mined after
every epoch from the first).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from feedrank.config import RetrievalConfig
from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import ClickLog
from feedrank.retrieval.encode import encode_items, encode_users, item_vectors_of, user_vectors
from feedrank.retrieval.two_tower import TwoTower, TwoTowerDims, build_two_tower
from feedrank.training.common import progress

MAX_MINED_QUERIES = 50_000  # mined negatives are refreshed for at most this many clicks per epoch


@dataclass(frozen=True)
class RetrievalTrainReport:
    examples: int
    epochs: int
    final_loss: float
    seconds: float
    hard_negatives_shown: int = 0
    checkpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShownNotClicked:
    """Impressions without a click, as a per-user time-sorted log (hard negative pool)."""

    log: ClickLog

    @classmethod
    def build(cls, user_codes: np.ndarray, ts: np.ndarray, items: np.ndarray, n_users: int) -> ShownNotClicked:
        return cls(ClickLog.build(user_codes, ts, items, n_users))

    def sample(self, user_codes: np.ndarray, ts: np.ndarray, rng: np.random.Generator, window: int = 10) -> np.ndarray:
        """(Q,) one item shown to each user near ``ts`` and not clicked; -1 when none."""
        lg = self.log
        pos = lg.positions_before(user_codes, ts) + rng.integers(-window, window, size=len(ts))
        lo, hi = lg.starts[user_codes], lg.ends[user_codes]
        ok = hi > lo
        pos = np.clip(pos, lo, np.maximum(hi - 1, lo))
        out = np.full(len(ts), -1, dtype=np.int64)
        out[ok] = lg.items[pos[ok]]
        return out


def two_tower_dims(cfg: RetrievalConfig, n_categories: int, n_subcategories: int, content_dim: int = 0) -> TwoTowerDims:
    return TwoTowerDims(
        id_buckets=cfg.id_buckets,
        text_buckets=cfg.text_buckets,
        n_categories=n_categories,
        n_subcategories=n_subcategories,
        embed_dim=cfg.embed_dim,
        out_dim=cfg.out_dim,
        history_len=cfg.history_len,
        content_dim=content_dim,
    )


def mine_negatives(model: TwoTower, catalog: ItemCatalog, hist: np.ndarray, ts: np.ndarray, positives: np.ndarray,
                   rank_min: int, rank_max: int, rng: np.random.Generator) -> np.ndarray:
    """(Q,) for each query one item the model ranks in [rank_min, rank_max) (not the positive);
    -1 where the catalogue is too small. Exact search over all items."""
    n = len(catalog)
    hi = min(rank_max, n)
    if hi - rank_min < 2:
        return np.full(len(hist), -1, dtype=np.int64)
    vecs = encode_items(model, catalog)
    users = encode_users(model, catalog, hist, ts, item_vecs=vecs)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    _, ids = index.search(users, hi)
    pick = ids[np.arange(len(hist)), rng.integers(rank_min, hi, size=len(hist))]
    pick[pick == positives] = -1
    return pick.astype(np.int64)


def train_two_tower(
    cfg: RetrievalConfig,
    catalog: ItemCatalog,
    clicks: ClickLog,
    n_categories: int,
    n_subcategories: int,
    rng: np.random.Generator,
    show_progress: bool = True,
    content: np.ndarray | None = None,
    shown: ShownNotClicked | None = None,
    checkpoint_dir: Path | None = None,
) -> tuple[TwoTower, RetrievalTrainReport]:
    """Train on every click in ``clicks`` (capped at ``cfg.max_train_examples``, newest kept).

    ``content`` (N, Dc) float32: content vectors by catalogue row (None: no content input).
    ``shown``: impressions without a click (hard negatives). ``checkpoint_dir``: where
    ``two_tower-epoch<E>.pt`` (state_dict) and ``.json`` (loss, time) go after each epoch."""
    t0 = time.perf_counter()
    n = len(clicks.items)
    if n < 2:
        raise ValueError(f"two-tower training needs at least 2 clicks, got {n}")
    sel = np.arange(n)
    if n > cfg.max_train_examples:
        newest = np.argsort(clicks.ts, kind="stable")[-cfg.max_train_examples :]
        sel = np.sort(newest)
    users = clicks.user_codes[sel]
    hist = clicks.histories(users, clicks.ts[sel], cfg.history_len)
    pos = clicks.items[sel]
    ts = clicks.ts[sel]
    # logQ: log of each item's share of training positives (its in-batch sampling rate).
    freq = np.bincount(pos, minlength=len(catalog)).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(freq, 1.0) / len(pos)).astype(np.float32))

    model = build_two_tower(two_tower_dims(cfg, n_categories, n_subcategories, 0 if content is None else content.shape[1]))
    model.set_content(content)
    opt_dense = torch.optim.Adam(model.dense_parameters(), lr=cfg.lr)
    opt_sparse = torch.optim.SparseAdam(model.sparse_parameters(), lr=cfg.lr)
    bs = min(cfg.batch_size, len(pos))
    steps = len(pos) // bs
    last = float("nan")
    mined = np.full(len(pos), -1, dtype=np.int64)
    n_hard = 0
    saved: list[str] = []
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(cfg.epochs):
        if epoch > 0 and cfg.hard_negative_ratio > 0 and cfg.hard_negative_mix < 1.0:
            q = rng.choice(len(pos), size=min(len(pos), MAX_MINED_QUERIES), replace=False)
            mined[:] = -1
            mined[q] = mine_negatives(model, catalog, hist[q], ts[q], pos[q], cfg.mined_rank_min, cfg.mined_rank_max, rng)
        model.train()
        perm = rng.permutation(len(pos))
        bar = progress(range(steps), desc=f"two-tower epoch {epoch + 1}/{cfg.epochs}", enabled=show_progress, unit="batch")
        running = 0.0
        for step in bar:
            b = perm[step * bs : (step + 1) * bs]
            items_b = pos[b]
            u, _ = user_vectors(model, catalog, hist[b], ts[b])
            v = item_vectors_of(model, catalog, items_b)
            logits = u @ v.T / cfg.temperature - log_q[torch.from_numpy(items_b)][None, :]
            same = torch.from_numpy(items_b[:, None] == items_b[None, :])
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, -1e9)
            hard = _hard_negatives(cfg, b, users, ts, mined, shown, rng, items_b)
            if hard is not None:
                has = hard >= 0
                n_hard += int(has.sum())
                hv = item_vectors_of(model, catalog, np.where(has, hard, 0))
                extra = (u * hv).sum(-1, keepdim=True) / cfg.temperature
                extra = extra.masked_fill(~torch.from_numpy(has)[:, None], -1e9)
                logits = torch.cat([logits, extra], dim=1)
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
        if checkpoint_dir is not None:
            path = checkpoint_dir / f"two_tower-epoch{epoch + 1}.pt"
            torch.save(model.state_dict(), path)
            (checkpoint_dir / f"two_tower-epoch{epoch + 1}.json").write_text(json.dumps(
                {"epoch": epoch + 1, "loss": running, "seconds": time.perf_counter() - t0, "dims": model.dims.__dict__}))
            saved.append(str(path))
    model.eval()
    return model, RetrievalTrainReport(examples=len(pos), epochs=cfg.epochs, final_loss=float(last),
                                       seconds=time.perf_counter() - t0, hard_negatives_shown=n_hard, checkpoints=tuple(saved))


def _hard_negatives(cfg: RetrievalConfig, b: np.ndarray, users: np.ndarray, ts: np.ndarray, mined: np.ndarray,
                    shown: ShownNotClicked | None, rng: np.random.Generator, positives: np.ndarray) -> np.ndarray | None:
    """(B,) one hard negative per row of the batch, -1 where none (None: no hard negatives)."""
    if cfg.hard_negative_ratio <= 0:
        return None
    take = rng.random(len(b)) < cfg.hard_negative_ratio
    use_shown = rng.random(len(b)) < cfg.hard_negative_mix
    out = np.where(take, mined[b], -1)
    if shown is not None:
        imp = shown.sample(users[b], ts[b], rng)
        out = np.where(take & (use_shown | (out < 0)), imp, out)
    out[out == positives] = -1
    return None if not (out >= 0).any() else out
