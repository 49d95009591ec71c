"""Training recipe for the two-tower model: sampled softmax with logQ correction, a
temperature, and hard negatives; step checkpoints (resumable) and the weights after every epoch.

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

Options: ``retrieval.train_offsets`` adds the retrieval prior's terms (category share,
popularity, age) to every logit with learned weights (``retrieval/train_offsets.py``; off by
default: no gain measured); ``retrieval.id_dropout`` (0.3) encodes that share of the item
occurrences without their hashed-id row in training, so the item tower also learns vectors
from metadata alone, as a new item gets them (docs/retrieval.md, "Third round").
"""

from __future__ import annotations

import dataclasses
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
from feedrank.retrieval.train_offsets import TrainOffsets, initial_weights, offset_terms, parse_terms
from feedrank.retrieval.two_tower import TwoTower, TwoTowerDims, build_two_tower
from feedrank.training import checkpoint as ckpt
from feedrank.training import distributed as dist
from feedrank.training.common import progress
from feedrank.training.sparse_adam import RowSparseAdam

MAX_MINED_QUERIES = 50_000  # mined negatives are refreshed for at most this many clicks per epoch
OFFSET_LR_SCALE = 10.0  # the offsets' scalar weights learn at 10x the towers' lr (a few hundred steps must move them by ~1)


@dataclass(frozen=True)
class RetrievalTrainReport:
    examples: int
    epochs: int
    final_loss: float
    seconds: float
    hard_negatives_shown: int = 0
    checkpoints: tuple[str, ...] = ()
    world_size: int = 1  # processes that trained (torch.distributed)
    comm_seconds: float = 0.0  # time in the gradient exchange, waiting excluded (rank-local)
    wait_seconds: float = 0.0  # estimated time waiting in it for the slowest rank (rank-local)
    resumed_from: str = ""  # "epoch E step S" when resumed from a step checkpoint
    train_seconds: float = 0.0  # wall time of the epoch loop alone (no data preparation)
    examples_per_s: float = 0.0  # examples this run stepped through (all ranks) / train_seconds
    steps: int = 0  # optimizer steps this run took (resumed steps not counted)
    train_cpu_seconds: float = 0.0  # CPU time of this process (all threads) during the epoch loop


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
        offset_terms=",".join(offset_terms(cfg.train_offsets)),
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


def _fingerprint(cfg: RetrievalConfig, n_items: int, content: np.ndarray | None, shown: ShownNotClicked | None,
                 users: np.ndarray, pos: np.ndarray, ts: np.ndarray, base_seed: int) -> str:
    meta = {"recipe": "two_tower", "cfg": dataclasses.asdict(cfg), "n_items": n_items, "base_seed": base_seed,
            "content": None if content is None else list(content.shape), "world": dist.world_size(),
            "shown": None if shown is None else len(shown.log.items)}
    return ckpt.fingerprint(meta, users, pos, ts)


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
    init: TwoTower | None = None,
) -> tuple[TwoTower, RetrievalTrainReport]:
    """Train on every click in ``clicks`` (capped at ``cfg.max_train_examples``, newest kept).

    ``content`` (N, Dc) float32: content vectors by catalogue row (None: no content input).
    ``shown``: impressions without a click (hard negatives). ``checkpoint_dir``: where
    ``two_tower-epoch<E>.pt`` (state_dict) and ``.json`` (loss, time) go after each epoch.
    ``init``: warm start from a copy of this model (``init`` is never modified; its dims
    are kept, ``cfg``'s table sizes are not used): every parameter is fine-tuned.

    ``rng`` gives one draw, the recipe's base seed; the data order and every sample of an
    epoch are pure functions of (base seed, epoch, step, rank), so a run resumed from a
    step checkpoint (``training.checkpoint.checkpointing``) is bit-identical to one that
    never stopped. Under torch.distributed each rank trains on its own disjoint shard of
    every epoch's order with a local batch of ``cfg.batch_size`` and gradients are averaged
    (``training.distributed``); the returned model is the same on every rank."""
    t0 = time.perf_counter()
    ex = TwoTowerExamples.build(cfg, catalog, clicks)
    users, hist, pos, ts = ex.users, ex.hist, ex.pos, ex.ts
    model = new_two_tower(cfg, n_categories, n_subcategories, content, init)
    opt_dense, opt_sparse = two_tower_optimizers(model, cfg)
    world, rank = dist.world_size(), dist.rank()
    if len(pos) < 2 * world:
        raise ValueError(f"two-tower training on {world} ranks needs at least {2 * world} clicks, got {len(pos)}")
    n_local = len(pos) // world
    bs = min(cfg.batch_size, n_local)
    steps = n_local // bs
    base_seed = dist.broadcast_int(int(rng.integers(2**62)))
    last = float("nan")
    running = 0.0
    mined = np.full(len(pos), -1, dtype=np.int64)
    n_hard = 0
    saved: list[str] = []
    timer = dist.CommTimer()
    fp = _fingerprint(cfg, len(catalog), content, shown, users, pos, ts, base_seed)
    # a warm start resumes only from a checkpoint of a run from the same weights (hashed only
    # when checkpointing is on: the id tables can be large)
    if init is not None and ckpt.active_policy() is not None:
        fp = ckpt.fingerprint({"run": fp, "init": sorted(init.state_dict())},
                              *(v.detach().cpu().numpy() for v in init.state_dict().values()))
    ck = ckpt.recipe_checkpoints("two_tower", fp)
    start_epoch, start_step, resumed = 0, 0, ""
    state = ck.resume() if ck is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt_dense.load_state_dict(state["optimizers"]["dense"])
        opt_sparse.load_state_dict(state["optimizers"]["sparse"])
        ckpt.set_global_rng_state(state["rng"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        running, n_hard, last = float(state["extra"]["running"]), int(state["extra"]["n_hard"]), float(state["extra"]["last"])
        mined = state["extra"]["mined"].numpy().copy()
        saved = list(state["extra"]["saved"])
        resumed = f"epoch {start_epoch} step {start_step}" + (" (finished)" if state.get("done") else "")

    def snapshot(epoch: int, step: int, done: bool) -> dict:
        return {"epoch": epoch, "step": step, "done": done, "base_seed": base_seed, "model": model.state_dict(),
                "optimizers": {"dense": opt_dense.state_dict(), "sparse": opt_sparse.state_dict()},
                "rng": ckpt.global_rng_state(),
                "extra": {"running": running, "n_hard": n_hard, "last": last, "mined": torch.from_numpy(mined),
                          "saved": list(saved)}}

    if checkpoint_dir is not None and dist.is_main():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    train_step = TwoTowerStep(cfg, model, catalog, ex, opt_dense, opt_sparse, shown, timer)
    t_loop, cpu_loop, steps_run = time.perf_counter(), time.process_time(), 0
    for epoch in range(start_epoch, cfg.epochs):
        first_step = start_step if epoch == start_epoch else 0
        if first_step == 0 and epoch > 0 and cfg.hard_negative_ratio > 0 and cfg.hard_negative_mix < 1.0:
            mrng = np.random.default_rng([base_seed, epoch, 1])
            q = mrng.choice(len(pos), size=min(len(pos), MAX_MINED_QUERIES), replace=False)
            mined[:] = -1
            mined[q] = mine_negatives(model, catalog, hist[q], ts[q], pos[q], cfg.mined_rank_min, cfg.mined_rank_max, mrng)
        model.train()
        order = dist.shard(np.random.default_rng([base_seed, epoch, 0]).permutation(len(pos)))
        bar = progress(range(first_step, steps), desc=f"two-tower epoch {epoch + 1}/{cfg.epochs}",
                       enabled=show_progress and dist.is_main(), unit="batch")
        for step in bar:
            srng = np.random.default_rng([base_seed, epoch, 2, step, rank])
            loss_v, hard_v = train_step(order[step * bs : (step + 1) * bs], mined, srng)
            n_hard += hard_v
            steps_run += 1
            running = 0.98 * running + 0.02 * loss_v if step else loss_v
            if step % 20 == 0:
                bar.set_postfix(loss=f"{running:.3f}")
            if ck is not None and step + 1 < steps and ck.due(epoch * steps + step + 1):
                ck.save(snapshot(epoch, step + 1, False))
        last = running
        if checkpoint_dir is not None and dist.is_main():
            path = checkpoint_dir / f"two_tower-epoch{epoch + 1}.pt"
            torch.save(model.state_dict(), path)
            (checkpoint_dir / f"two_tower-epoch{epoch + 1}.json").write_text(json.dumps(
                {"epoch": epoch + 1, "loss": running, "seconds": time.perf_counter() - t0, "dims": model.dims.__dict__}))
            saved.append(str(path))
        if ck is not None:
            ck.save(snapshot(epoch + 1, 0, epoch + 1 == cfg.epochs))
    train_seconds, train_cpu = time.perf_counter() - t_loop, time.process_time() - cpu_loop
    dist.broadcast_module(model)
    model.item.id_dropout = 0.0  # training only: the returned model encodes with every id row, whatever its mode
    model.eval()
    seconds = time.perf_counter() - t0
    return model, RetrievalTrainReport(examples=len(pos), epochs=cfg.epochs, final_loss=float(last),
                                       seconds=seconds, hard_negatives_shown=n_hard, checkpoints=tuple(saved),
                                       world_size=world, comm_seconds=timer.comm_s, wait_seconds=timer.wait_s,
                                       resumed_from=resumed,
                                       train_seconds=train_seconds,
                                       examples_per_s=steps_run * bs * world / train_seconds if train_seconds > 0 else 0.0,
                                       steps=steps_run, train_cpu_seconds=train_cpu)


STEP_PIECES = ("data", "forward", "backward", "exchange", "dense_adam", "sparse_adam")


@dataclass(frozen=True)
class TwoTowerExamples:
    """The recipe's examples: the clicks (the newest ``max_train_examples``), by example."""

    users: np.ndarray  # (E,) user codes
    hist: np.ndarray  # (E, history_len) catalogue rows clicked before, -1 pad, most recent last
    pos: np.ndarray  # (E,) the clicked catalogue row
    ts: np.ndarray  # (E,) click time, epoch seconds
    log_q: torch.Tensor  # (N,) float32 log of each item's share of the positives (logQ correction)
    offsets: TrainOffsets | None = None  # the prior's terms in the logit (``retrieval.train_offsets``; None: off)

    @classmethod
    def build(cls, cfg: RetrievalConfig, catalog: ItemCatalog, clicks: ClickLog) -> TwoTowerExamples:
        n = len(clicks.items)
        if n < 2:
            raise ValueError(f"two-tower training needs at least 2 clicks, got {n}")
        sel = np.arange(n)
        if n > cfg.max_train_examples:
            sel = np.sort(np.argsort(clicks.ts, kind="stable")[-cfg.max_train_examples :])
        users, ts, pos = clicks.user_codes[sel], clicks.ts[sel], clicks.items[sel]
        hist = clicks.histories(users, ts, cfg.history_len)
        freq = np.bincount(pos, minlength=len(catalog)).astype(np.float64)
        log_q = torch.from_numpy(np.log(np.maximum(freq, 1.0) / len(pos)).astype(np.float32))
        terms = offset_terms(cfg.train_offsets)
        offsets = TrainOffsets.build(terms, catalog, clicks) if terms else None  # counts over every train click
        return cls(users, hist, pos, ts, log_q, offsets)


def new_two_tower(cfg: RetrievalConfig, n_categories: int, n_subcategories: int, content: np.ndarray | None,
                  init: TwoTower | None = None) -> TwoTower:
    """The model the recipe trains: fresh from ``cfg``, or a checked copy of ``init``."""
    if init is None:
        model = build_two_tower(two_tower_dims(cfg, n_categories, n_subcategories, 0 if content is None else content.shape[1]))
    else:
        model = warm_copy(init, n_categories, n_subcategories, content)
        want = ",".join(offset_terms(cfg.train_offsets))
        if model.dims.offset_terms != want:
            raise ValueError(f"two-tower warm start: init was trained with offsets {model.dims.offset_terms!r}, "
                             f"retrieval.train_offsets asks for {want!r} (use the init's setting)")
    model.item.id_dropout = cfg.id_dropout
    if model.offset_weights is not None and init is None:
        with torch.no_grad():
            model.offset_weights.copy_(initial_weights(parse_terms(model.dims.offset_terms)))
    model.set_content(content)
    return model


def two_tower_optimizers(model: TwoTower, cfg: RetrievalConfig) -> tuple[torch.optim.Adam, RowSparseAdam]:
    """Adam for the dense parameters; for the hashed tables SparseAdam's arithmetic and state
    with row-indexed updates (``training/sparse_adam.py``: the same bits, faster). The
    offsets' weights (``retrieval.train_offsets``) learn at ``OFFSET_LR_SCALE`` x lr."""
    off = model.offset_weights
    dense = [p for p in model.dense_parameters() if p is not off]
    groups: list[dict] = [{"params": dense}] + ([{"params": [off], "lr": cfg.lr * OFFSET_LR_SCALE}] if off is not None else [])
    return torch.optim.Adam(groups, lr=cfg.lr), RowSparseAdam(model.sparse_parameters(), lr=cfg.lr)


class TwoTowerStep:
    """One optimizer step of the recipe on a local batch: hard negatives, both towers,
    in-batch softmax with logQ, backward, the gradient mean over ranks, Adam and SparseAdam.

        step = TwoTowerStep(cfg, model, catalog, examples, opt_dense, opt_sparse, shown, timer)
        loss, n_hard = step(batch_rows, mined, rng)     # the same on every rank

    ``clock``: when a dict, the seconds of each piece (``STEP_PIECES``) are added to it and
    ``rows`` gets each table's coalesced rows per step (a profile: ``bench/step_profile.py``;
    counting the rows is timed as ``"count"``, outside the step's pieces)."""

    def __init__(self, cfg: RetrievalConfig, model: TwoTower, catalog: ItemCatalog, examples: TwoTowerExamples,
                 opt_dense: torch.optim.Optimizer, opt_sparse: torch.optim.Optimizer, shown: ShownNotClicked | None,
                 timer: dist.CommTimer) -> None:
        self.cfg, self.model, self.catalog, self.ex = cfg, model, catalog, examples
        self.opt_dense, self.opt_sparse, self.shown, self.timer = opt_dense, opt_sparse, shown, timer
        self.world = dist.world_size()
        self.dense_params, self.sparse_params = model.dense_parameters(), model.sparse_parameters()
        self.clock: dict[str, float] | None = None
        self.rows: list[int] = [0] * len(self.sparse_params)

    def __call__(self, b: np.ndarray, mined: np.ndarray, rng: np.random.Generator) -> tuple[float, int]:
        """Train on examples ``b`` (this rank's batch); ``mined`` (E,) mined hard negatives
        (-1: none); ``rng`` the step's generator. Returns (loss, hard negatives used), both
        over all ranks."""
        cfg, model, catalog, ex, clock = self.cfg, self.model, self.catalog, self.ex, self.clock
        marks = [time.perf_counter()] if clock is not None else None
        items_b = ex.pos[b]
        hard = _hard_negatives(cfg, b, ex.users, ex.ts, mined, self.shown, rng, items_b)
        hist_b, ts_b = ex.hist[b], ex.ts[b]
        if marks is not None:
            marks.append(time.perf_counter())
        u, aff = user_vectors(model, catalog, hist_b, ts_b)
        v = item_vectors_of(model, catalog, items_b)
        logits = u @ v.T / cfg.temperature - ex.log_q[torch.from_numpy(items_b)][None, :]
        same = torch.from_numpy(items_b[:, None] == items_b[None, :])
        off = ex.offsets if model.offset_weights is not None else None
        if off is not None:  # the prior's terms in the logit; items not yet published are no negatives
            feats, dead = off.pairs(aff, ts_b, items_b)
            logits = logits + torch.einsum("k,kbm->bm", model.offset_weights, feats)
            same = same | dead
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, -1e9)
        step_hard = 0
        if hard is not None:
            has = hard >= 0
            step_hard = int(has.sum())
            hv = item_vectors_of(model, catalog, np.where(has, hard, 0))
            extra = (u * hv).sum(-1, keepdim=True) / cfg.temperature
            if off is not None:
                hfeats, hdead = off.rows(aff, ts_b, np.where(has, hard, 0))
                extra = extra + (model.offset_weights @ hfeats)[:, None]
                has = has & ~hdead.numpy()
            extra = extra.masked_fill(~torch.from_numpy(has)[:, None], -1e9)
            logits = torch.cat([logits, extra], dim=1)
        loss = F.cross_entropy(logits, torch.arange(len(b)))
        if marks is not None:
            marks.append(time.perf_counter())
        self.opt_dense.zero_grad(set_to_none=True)
        self.opt_sparse.zero_grad(set_to_none=True)
        loss.backward()
        loss_v, hard_v = loss.item(), step_hard
        if marks is not None:
            marks.append(time.perf_counter())
            self.rows = [r + (0 if p.grad is None else p.grad.coalesce()._nnz()) for r, p in zip(self.rows, self.sparse_params)]
            t = time.perf_counter()
            assert clock is not None
            clock["count"] = clock.get("count", 0.0) + t - marks[-1]
            marks.append(t)
        if self.world > 1:  # mean gradient over the global batch; the step's loss and hard count ride along
            avg = dist.average_gradients(self.dense_params, self.sparse_params,
                                         torch.tensor([loss_v, float(step_hard)]), self.timer)
            loss_v, hard_v = float(avg[0]), int(round(float(avg[1]) * self.world))
        if marks is not None:
            marks.append(time.perf_counter())
        self.opt_dense.step()
        if marks is not None:
            marks.append(time.perf_counter())
        self.opt_sparse.step()
        if marks is not None:
            assert clock is not None
            marks.append(time.perf_counter())
            spans = (marks[1] - marks[0], marks[2] - marks[1], marks[3] - marks[2], marks[5] - marks[4],
                     marks[6] - marks[5], marks[7] - marks[6])
            for k, sec in zip(STEP_PIECES, spans):
                clock[k] = clock.get(k, 0.0) + sec
        return loss_v, hard_v


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


def warm_copy(init: TwoTower, n_categories: int, n_subcategories: int, content: np.ndarray | None) -> TwoTower:
    """A trainable copy of ``init`` (same dims and weights) after checking the data fits it."""
    d = init.dims
    if (n_categories, n_subcategories) != (d.n_categories, d.n_subcategories):
        raise ValueError(f"two-tower warm start: init has {d.n_categories} categories / {d.n_subcategories} "
                         f"subcategories, the data {n_categories} / {n_subcategories} (use init's vocabularies)")
    if d.content_dim and (content is None or content.shape[1] != d.content_dim):
        raise ValueError(f"two-tower warm start: init uses {d.content_dim}-d content vectors, got "
                         f"{None if content is None else tuple(content.shape)}")
    if not d.content_dim and content is not None:
        raise ValueError("two-tower warm start: init has no content input, got content vectors")
    model = build_two_tower(d)
    model.load_state_dict(init.state_dict())
    return model
