"""Training recipes for the ranker and its distilled small version.

``train_ranker``: batches of whole impressions (so pairwise / listwise losses and the
fairness term see complete lists); loss = ranking loss on the click logit (with the
position term) + ``dwell_loss_weight`` * MSE of the log-dwell head on clicked rows with a
dwell + ``fairness_weight`` * exposure gap between creator groups.

``train_distilled``: a small MLP ranker trained to reproduce the big one's click logits and
dwell predictions at the serving position (MSE), on the same examples.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from feedrank.config import RankingConfig
from feedrank.ranking.features import FEATURE_NAMES
from feedrank.ranking.losses import exposure_gap, ranking_loss
from feedrank.ranking.model import Ranker, build_ranker, predict_heads
from feedrank.training.loop import TrainLoop


CALENDAR_FEATURES = ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos")


@dataclass(frozen=True)
class RankingTrainReport:
    examples: int
    positives: int
    epochs: int
    final_loss: float
    seconds: float
    loss: str = "pointwise"
    interaction: str = "mlp"
    world_size: int = 1  # processes that trained (torch.distributed)
    comm_seconds: float = 0.0  # time in gradient all-reduce (rank-local)
    resumed_from: str = ""  # "epoch E step S" when resumed from a step checkpoint


def group_batches(groups: np.ndarray | None, n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices split into batches of whole groups (shuffled groups, ~batch_size rows each).

    ``groups`` (N,) any ids, or None (each row its own group). Returns a list of (b,) int64."""
    if groups is None:
        perm = rng.permutation(n)
        return [perm[s : s + batch_size] for s in range(0, n, batch_size)]
    codes, uniques = pd.factorize(pd.Series(groups), sort=False)
    g_perm = rng.permutation(len(uniques))
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[g_perm] = np.arange(len(uniques))
    order = np.argsort(rank[codes], kind="stable")
    sizes = np.bincount(rank[codes], minlength=len(uniques))
    ends = np.cumsum(sizes)
    cuts = np.unique(np.searchsorted(ends, np.arange(batch_size, n, batch_size), side="left"))
    bounds = [0, *[int(ends[c]) for c in cuts if ends[c] < n], n]
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def feature_scaling(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F,) mean and std for normalising (N, F) features. Calendar features (hour and weekday
    on the unit circle) get their known scale (mean 0, std 1/sqrt 2) instead of the sample's:
    a train window of a day or two barely varies them, and a tiny sample std would blow up
    every later request's input. Other stds are floored at 1e-3."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-3)
    for name in CALENDAR_FEATURES:
        j = FEATURE_NAMES.index(name)
        if j < x.shape[1]:
            mean[j], std[j] = 0.0, 0.5**0.5
    return mean, std


def _local_groups(g: torch.Tensor) -> torch.Tensor:
    return torch.unique(g, return_inverse=True)[1]


def _warm_copy(init: Ranker, dense: np.ndarray, category: np.ndarray, init_examination: np.ndarray | None) -> Ranker:
    """A trainable deep copy of ``init`` after checking that the data fits it."""
    if init_examination is not None:
        raise ValueError("train_ranker: init (a warm start) keeps its own position term; do not pass init_examination too")
    if dense.ndim != 2 or dense.shape[1] < init.n_features:
        raise ValueError(f"train_ranker: init expects {init.n_features} dense features, got shape {tuple(dense.shape)}")
    if len(category) and (int(category.max()) >= init.n_categories or int(category.min()) < 0):
        raise ValueError(f"train_ranker: init has {init.n_categories} categories, got codes in "
                         f"[{int(category.min())}, {int(category.max())}]")
    model = copy.deepcopy(init)
    for p in model.parameters():
        p.requires_grad_(True)
    return model



def train_ranker(
    cfg: RankingConfig,
    dense: np.ndarray,
    category: np.ndarray,
    position: np.ndarray,
    labels: np.ndarray,
    n_categories: int,
    rng: np.random.Generator,
    show_progress: bool = True,
    groups: np.ndarray | None = None,
    log_dwell: np.ndarray | None = None,
    protected: np.ndarray | None = None,
    init_examination: np.ndarray | None = None,
    init: Ranker | None = None,
) -> tuple[Ranker, RankingTrainReport]:
    """dense (N, F) float32, category/position (N,) int64, labels (N,) {0,1};
    groups (N,) impression ids (needed by pairwise/listwise); log_dwell (N,) float
    log1p(dwell s), NaN where unknown; protected (N,) bool creator group for fairness;
    init_examination (N_POSITIONS,) CTR-by-slot ratios to start the position term from
    (``log`` of them), so it only has to refine what the logs already show.

    ``init``: warm start. Training starts from a copy of this ranker (``init`` itself is
    never modified): every parameter, the position term included, is trained, and its
    input normalisation and feature set are kept (the weights were learned against them;
    columns of ``dense`` past ``init.n_features`` are ignored). ``n_categories``,
    ``cfg.hidden`` and ``cfg.interaction`` are then taken from ``init``."""
    t0 = time.perf_counter()
    n = len(labels)
    if n == 0:
        raise ValueError("ranker training needs impressions, got none")
    if cfg.loss != "pointwise" and groups is None:
        raise ValueError(f"loss {cfg.loss!r} needs impression groups")
    if init is None:
        model = build_ranker(n_categories, cfg.hidden, cfg.interaction, cfg.cross_layers, n_features=dense.shape[1])
        model.set_normalisation(*feature_scaling(torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))))
        if init_examination is not None:
            with torch.no_grad():
                model.position_bias.weight[:, 0] = torch.log(torch.as_tensor(init_examination, dtype=torch.float32).clamp_min(1e-3))
    else:
        model = _warm_copy(init, dense, category, init_examination)
        dense = dense[:, : model.n_features]
    x = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    cat = torch.from_numpy(category.astype(np.int64))
    pos = torch.from_numpy(position.astype(np.int64))
    y = torch.from_numpy(labels.astype(np.float32))
    g_all = torch.from_numpy(pd.factorize(pd.Series(groups))[0].astype(np.int64)) if groups is not None else torch.arange(n)
    dw = None if log_dwell is None else torch.from_numpy(np.asarray(log_dwell, dtype=np.float32))
    prot = None if protected is None or cfg.fairness_weight <= 0 else torch.from_numpy(np.asarray(protected, dtype=bool))
    # the position term is a handful of scalars that must travel far (log examination of a
    # deep slot is about -2): it gets 10x the learning rate so a few epochs reach it. In a
    # warm start it also takes up a shift of the click rate in the new data first, so the
    # trunk's steps go to relevance (pipeline/warmstart.py: MIN_RANKER_STEPS)
    pos_params = list(model.position_bias.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in pos_params)]
    opt = torch.optim.Adam([{"params": rest}, {"params": pos_params, "lr": cfg.lr * 10, "weight_decay": 0.0}],
                           lr=cfg.lr, weight_decay=cfg.weight_decay)
    bs = min(cfg.batch_size, n)
    # resumable (training.checkpoint) and data-parallel (each rank its share of the batches)
    meta: dict = {"cfg": dataclasses.asdict(cfg), "n": n}
    init_arrays: tuple[np.ndarray, ...] = ()
    if init is not None:  # a warm start resumes only from a checkpoint of a run from the same weights
        meta["init"] = sorted(init.state_dict())
        init_arrays = tuple(v.detach().cpu().numpy() for v in init.state_dict().values())
    loop = TrainLoop("ranker", model, {"adam": opt}, rng, meta=meta,
                     arrays=(dense, category, position, labels, *init_arrays), epochs=cfg.epochs, show_progress=show_progress)
    for epoch in loop.epochs():
        model.train()
        batches = loop.shard(group_batches(groups, n, bs, loop.epoch_rng(epoch)))
        for step, b_np in loop.steps(batches, desc=f"ranker epoch {epoch + 1}/{cfg.epochs}"):
            b = torch.from_numpy(b_np)
            g = _local_groups(g_all[b])
            click_logit, dwell_pred = model.heads(x[b], cat[b], pos[b])
            loss = ranking_loss(cfg.loss, click_logit, y[b], g)
            if dw is not None and cfg.dwell_loss_weight > 0:
                ok = torch.isfinite(dw[b])
                if bool(ok.any()):
                    loss = loss + cfg.dwell_loss_weight * F.mse_loss(dwell_pred[ok], dw[b][ok])
            if prot is not None:
                rel = click_logit - model._position_term(pos[b])  # exposure follows relevance, not the slot
                loss = loss + cfg.fairness_weight * exposure_gap(rel, g, prot[b])
            loop.backward_step(loss)
    running = loop.finish()
    model.eval()
    return model, RankingTrainReport(n, int(labels.sum()), cfg.epochs, float(running), time.perf_counter() - t0,
                                     cfg.loss, cfg.interaction, loop.world, loop.timer.comm_s, loop.resumed)


def train_distilled(
    cfg: RankingConfig,
    teacher: Ranker,
    dense: np.ndarray,
    category: np.ndarray,
    rng: np.random.Generator,
    show_progress: bool = True,
) -> tuple[Ranker, RankingTrainReport]:
    """A small MLP ranker (``cfg.distill_hidden``) fit to the teacher's serving-position
    click logits and dwell predictions (MSE). dense (N, F), category (N,)."""
    t0 = time.perf_counter()
    n = len(dense)
    t_logit, t_dwell = predict_heads(teacher, dense, category)
    student = build_ranker(teacher.n_categories, cfg.distill_hidden, "mlp", 0, n_features=dense.shape[1])
    student.set_normalisation(teacher.mean.clone(), teacher.std.clone())
    x = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    cat = torch.from_numpy(category.astype(np.int64))
    tl, td = torch.from_numpy(t_logit), torch.from_numpy(t_dwell)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr * 2, weight_decay=0.0)
    bs = min(cfg.batch_size * 2, n)
    loop = TrainLoop("ranker_small", student, {"adam": opt}, rng, meta={"cfg": dataclasses.asdict(cfg), "n": n},
                     arrays=(dense, category, t_logit), epochs=cfg.distill_epochs, show_progress=show_progress)
    for epoch in loop.epochs():
        student.train()
        perm = torch.from_numpy(loop.epoch_rng(epoch).permutation(n))
        batches = loop.shard([perm[s * bs : (s + 1) * bs] for s in range(max(1, n // bs))])
        for _step_i, b in loop.steps(batches, desc=f"distill epoch {epoch + 1}/{cfg.distill_epochs}"):
            lo, dwp = student.heads(x[b], cat[b])
            loss = F.mse_loss(lo, tl[b]) + 0.1 * F.mse_loss(dwp, td[b])
            loop.backward_step(loss)
    running = loop.finish()
    student.eval()
    return student, RankingTrainReport(n, 0, cfg.distill_epochs, float(running), time.perf_counter() - t0, "distill", "mlp",
                                       loop.world, loop.timer.comm_s, loop.resumed)
