"""Train a challenger warm-started from the champion's weights (``feedrank retrain``).

    art = train_challenger(champion, prep, cfg, epochs=1)     # ModelArtifacts, not saved

The champion's two-tower and ranker are fine-tuned by the training recipes themselves,
``retrieval.train.train_two_tower(init=...)`` and ``ranking.train.train_ranker(init=...)``
(same losses, checkpointing and data parallelism as a full training; the recipes copy the
champion's weights and train every parameter of the copy, the ranker's position term
included), for ``epochs`` epochs at ``LR_SCALE`` times the configured learning rates, on the
newest training rows of ``prep``. The challenger reuses the champion's vocabularies and
hashing buckets, so new items and users need no new rows:

* two-tower: the newest ``retrieval.max_train_examples`` new train clicks;
* ranker: the newest ``ranking.max_train_examples`` new train impressions, keeping the
  champion's input normalisation (the weights were learned against it), in batches small
  enough that an epoch takes at least ``MIN_RANKER_STEPS`` optimizer steps;
* then what a full training does after the models: item vectors and the ANN index over
  the whole (grown) catalogue, a fresh calibrator on the newest held-back impressions, the
  distilled ranker, serving counters and the online snapshot over every event.

A warm-started ranker keeps the champion's feature set: features added to
``ranking/features.py`` after the champion was trained are sliced off (as serving does,
``Ranker.trunk``); they arrive with the next full ``feedrank train``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable

import numpy as np

from feedrank.config import FeedrankConfig, RankingConfig, RetrievalConfig, config_to_dict
from feedrank.data.split import split_to_dict
from feedrank.errors import SchemaError
from feedrank.pipeline.artifacts import ModelArtifacts
from feedrank.pipeline.build import Prepared, item_content, learn_max_item_age, shown_not_clicked, snapshot
from feedrank.pipeline.examples import engagement_state, ranking_examples, spec_from_info
from feedrank.ranking.calibration import Calibrator, fit_calibrator
from feedrank.ranking.model import Ranker, logits, predict_heads
from feedrank.ranking.train import train_distilled, train_ranker
from feedrank.retrieval.encode import encode_items
from feedrank.retrieval.index import IndexParams, build_index, check_recall
from feedrank.retrieval.train import ShownNotClicked, train_two_tower, warm_copy
from feedrank.retrieval.two_tower import TwoTower
from feedrank.training.common import seed_everything, setup_threads

# Fine-tuning starts from a trained model with fresh Adam moments: at the full learning
# rate the first steps knock it off its optimum (measured: recall@100 fell 0.05 to 0.1
# after one warm epoch on the tiny test worlds); a third of it keeps what it knew.
LR_SCALE = 0.3
# A fine-tuning epoch of the ranker takes at least this many optimizer steps: a small
# increment is fine-tuned in smaller batches (never below MIN_RANKER_BATCH rows) instead of
# a handful of full-size steps. Measured on the 800-user test world (4,280 new impressions,
# 1.3% CTR, champion AUC 0.726 on the held-out slice): at batch 1024 an epoch was 4 steps
# and 5 epochs on inverted labels only chased the base rate (loss 4.3, AUC -0.005, the same
# move as a good challenger's), so the gate could not tell them apart; with >= 64 steps the
# inverted challenger falls to AUC 0.29 and a good one gains 0.01.
MIN_RANKER_STEPS = 64
MIN_RANKER_BATCH = 32
# An isotonic calibrator refit on a handful of clicks is a coarse step function whose ties
# cost AUC (measured: -0.012 with ~5 clicks); below this the champion's is kept.
MIN_CALIBRATION_CLICKS = 100


def copy_two_tower(champion: TwoTower, content: np.ndarray | None) -> TwoTower:
    """A new TwoTower with the champion's weights (the recipe's warm copy,
    ``retrieval.train.warm_copy``); ``content`` (N, Dc) for the new catalogue, ignored when
    the champion has no content input."""
    d = champion.dims
    if d.content_dim and (content is None or content.shape[1] != d.content_dim):
        raise SchemaError("warm start: the champion uses content vectors of dim "
                          f"{d.content_dim}, got {None if content is None else content.shape}")
    content = content if d.content_dim else None
    model = warm_copy(champion, d.n_categories, d.n_subcategories, content)
    model.set_content(content)
    return model


def copy_ranker(champion: Ranker) -> Ranker:
    """A deep copy of the champion's ranker (weights, normalisation, position term)."""
    model = copy.deepcopy(champion)
    model.load_state_dict(champion.state_dict())
    return model


def warm_configs(cfg: FeedrankConfig, epochs: int, lr_scale: float = LR_SCALE) -> tuple[RetrievalConfig, RankingConfig]:
    """The two recipes' configs for fine-tuning: ``epochs`` epochs at ``lr_scale`` times
    the configured learning rates (every other setting as configured)."""
    if epochs < 1:
        raise ValueError(f"warm start needs epochs >= 1, got {epochs}")
    if not 0.0 < lr_scale <= 1.0:
        raise ValueError(f"warm start lr_scale must be in (0, 1], got {lr_scale}")
    return (dataclasses.replace(cfg.retrieval, epochs=epochs, lr=cfg.retrieval.lr * lr_scale),
            dataclasses.replace(cfg.ranking, epochs=epochs, lr=cfg.ranking.lr * lr_scale))


def fine_tune_batch_size(n_rows: int, configured: int) -> int:
    """The ranker's fine-tuning batch: ``configured``, or smaller so that an epoch over
    ``n_rows`` takes at least ``MIN_RANKER_STEPS`` steps (floor ``MIN_RANKER_BATCH``)."""
    return int(max(1, min(configured, max(MIN_RANKER_BATCH, n_rows // MIN_RANKER_STEPS))))


def warm_two_tower(champion: TwoTower, prep: Prepared, fit_rows: np.ndarray, content: np.ndarray | None,
                   rcfg: RetrievalConfig, rng: np.random.Generator,
                   show_progress: bool = True) -> tuple[TwoTower, dict[str, Any]]:
    """``train_two_tower`` from the champion's weights on the clicks of ``fit_rows`` (E,) bool
    (fewer than 2 clicks: an untrained copy). Returns (model, report dict)."""
    ev, catalog = prep.events, prep.catalog
    clicks = ev.click_log(np.flatnonzero(fit_rows))
    if len(clicks.items) < 2:
        return copy_two_tower(champion, content), {"examples": int(len(clicks.items)), "epochs": 0, "final_loss": None,
                                                   "seconds": 0.0}
    shown: ShownNotClicked | None = shown_not_clicked(ev, fit_rows) if rcfg.hard_negative_ratio > 0 else None
    model, report = train_two_tower(rcfg, catalog, clicks, champion.dims.n_categories, champion.dims.n_subcategories,
                                    rng, show_progress, content=content, shown=shown, init=champion)
    return model, dataclasses.asdict(report)


def train_challenger(champion: ModelArtifacts, prep: Prepared, cfg: FeedrankConfig, epochs: int = 1,
                     show_progress: bool = True, say: Callable[[str], None] = print,
                     label_noise: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                     since_ts: float | None = None) -> ModelArtifacts:
    """A challenger warm-started from ``champion`` and fine-tuned on ``prep``'s train side:
    only the rows after ``since_ts`` (the champion's cut-off: what it has not seen; None =
    every train row). Going over the champion's own data again overfits it (measured on the
    test worlds: recall@100 fell with every extra pass), so old events only serve as the
    point-in-time context of the new ones (histories, counters).

    ``prep`` must have been prepared with the champion's vocabularies. ``label_noise``
    (for tests and drills) maps the ranker's training labels (R,) to other labels, e.g. a
    permutation, to produce a deliberately broken challenger. Returns unsaved artifacts."""
    t_all = time.perf_counter()
    setup_threads(cfg.training.threads)
    rng = seed_everything(cfg.training.seed + 1)
    ev, split, catalog = prep.events, prep.split, prep.catalog
    if len(prep.vocabs["category"]) != len(champion.vocabs["category"]):
        raise SchemaError("warm start needs the champion's vocabularies: prepare the data with vocabs=champion.vocabs")
    train_rows = np.zeros(len(ev), dtype=bool)
    train_rows[split.train_idx] = True
    fit_rows = train_rows if since_ts is None else train_rows & (ev.ts > since_ts)
    say(f"challenger: fine-tuning on {int(fit_rows.sum()):,} new train events (of {int(train_rows.sum()):,})")
    rcfg, kcfg = warm_configs(cfg, epochs)
    content, content_kind = item_content(cfg, catalog, say) if champion.two_tower.dims.content_dim else (None, "none")
    tt, tt_report = warm_two_tower(champion.two_tower, prep, fit_rows, content, rcfg, rng, show_progress)
    say(f"challenger two-tower: {tt_report['examples']:,} clicks, loss {tt_report['final_loss']} in {tt_report['seconds']:.1f}s")
    clicks = ev.click_log(np.flatnonzero(train_rows))
    max_age_s = learn_max_item_age(cfg.retrieval.max_item_age_hours, clicks, catalog)
    vectors = encode_items(tt, catalog)
    index = build_index(vectors, cfg.retrieval.index, seed=cfg.training.seed, params=IndexParams.from_config(cfg.retrieval))
    index_recall = check_recall(index, vectors, cfg.retrieval.recall_floor, rng)

    # the ranker's count features are smoothed towards the prior CTR it was trained with
    prior_ctr = float(champion.info.get("prior_ctr", 0.05))
    ranker, small, calibrator, state, rk_info = None, None, Calibrator(), None, None
    if champion.ranker is not None:
        ranker, small, calibrator, state, rk_info = _warm_ranking_stage(champion, prep, fit_rows, tt, vectors, prior_ctr,
                                                                         cfg, kcfg, rng, show_progress, say, label_noise)
    n_cat = len(prep.vocabs["category"])
    art = ModelArtifacts(
        cfg=cfg, vocabs=prep.vocabs, items=prep.items, catalog=catalog, two_tower=tt, item_vectors=vectors, index=index,
        ranker=ranker, snapshot=snapshot(ev, len(catalog), cfg.retrieval.history_len), ranker_small=small,
        calibrator=calibrator, engagement=state,
        info={
            "ranking": rk_info,
            "prior_ctr": prior_ctr,
            # the retrieval prior's weights (fitted on clicks the champion's towers had not
            # seen) carry over: the fine-tuned towers start from the champion's, and a
            # refit on clicks they have just been trained on would give the prior no weight
            "age_prior": champion.info.get("age_prior"),
            "age_prior_fit": {"fit": "carried_over", "from": champion.version,
                              "champion_fit": champion.info.get("age_prior_fit")},
            "max_item_age_s": max_age_s,
            "dataset": {"path": str(prep.dataset.root), "source": prep.dataset.meta.source, "n_items": len(catalog),
                        "n_events": len(ev)},
            "split": split_to_dict(split),
            "index_recall_at_100": index_recall,
            "recall_floor": cfg.retrieval.recall_floor,
            "content_encoder": content_kind,
            "train_reports": {"two_tower": tt_report, "ranker": None if rk_info is None else rk_info.get("train_report")},
            "warm_start": {"from": champion.version, "epochs": epochs, "lr_scale": LR_SCALE,
                           "min_ranker_steps": MIN_RANKER_STEPS, "since_ts": since_ts,
                           "fit_events": int(fit_rows.sum()), "n_categories": n_cat,
                           "seconds": time.perf_counter() - t_all},
            "config": config_to_dict(cfg),
        },
    )
    return art


def _warm_ranking_stage(champion: ModelArtifacts, prep: Prepared, train_rows: np.ndarray, tt: TwoTower,
                        vectors: np.ndarray, prior_ctr: float, cfg: FeedrankConfig, tune: RankingConfig,
                        rng: np.random.Generator, show_progress: bool, say: Callable[[str], None],
                        label_noise: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None) -> tuple:
    """``train_ranker`` from the champion's ranker (``tune``: the fine-tuning config);
    refit calibration; distil (with ``cfg.ranking``, as a full training does); serving counters."""
    ev, catalog = prep.events, prep.catalog
    rc = cfg.ranking
    n_cat = len(prep.vocabs["category"])
    imp_rows = np.flatnonzero(train_rows & ev.mask("impression") & (ev.request_codes >= 0))[-rc.max_train_examples:]
    old_spec = spec_from_info(champion.info.get("ranking"), prep.items, catalog)
    spec = None if old_spec is None else old_spec.with_catalog(prep.items, catalog)
    state = None if spec is None else engagement_state(ev, catalog, n_cat, spec)
    if not len(imp_rows):  # nothing new to learn from: the champion's ranker, fresh counters
        say("challenger ranker: no new impressions; keeping the champion's ranker")
        small = None if champion.ranker_small is None else copy_ranker(champion.ranker_small)
        info0 = {k: v for k, v in (champion.info.get("ranking") or {}).items()}
        return copy_ranker(champion.ranker), small, champion.calibrator, state, {**info0, "train_report": None}
    ex = ranking_examples(ev, imp_rows, catalog, tt, vectors, n_cat, cfg.retrieval.history_len, prior_ctr, rc.ctr_prior, spec)
    n_cal = int(len(imp_rows) * rc.calibration_fraction) if rc.calibration != "none" else 0
    cut = len(imp_rows) - n_cal
    while 0 < cut < len(imp_rows) and ex.groups[cut] == ex.groups[cut - 1] and ex.groups[cut] >= 0:
        cut += 1
    fit, cal = slice(0, cut), slice(cut, len(imp_rows))
    labels = ex.labels[fit] if label_noise is None else label_noise(ex.labels[fit], rng)
    protected = None if spec is None else spec.creator_new[ex.items[fit]] > 0
    tune = dataclasses.replace(tune, batch_size=fine_tune_batch_size(cut, tune.batch_size))
    ranker, report = train_ranker(tune, ex.dense[fit], ex.category[fit], ex.position[fit], labels, n_cat, rng,
                                  show_progress, groups=ex.groups[fit], log_dwell=np.log1p(ex.dwell_ms[fit] / 1000.0),
                                  protected=protected, init=champion.ranker)
    say(f"challenger ranker: {report.examples:,} impressions, loss {report.final_loss:.4f} in {report.seconds:.1f}s")
    info: dict[str, Any] = {"train_report": dataclasses.asdict(report), "spec": None if spec is None else spec.to_dict()}
    calibrator = champion.calibrator
    if cut < len(imp_rows) and ex.labels[cal].sum() >= MIN_CALIBRATION_CLICKS:
        z = logits(ranker, ex.dense[cal], ex.category[cal])
        calibrator = fit_calibrator(rc.calibration, z, ex.labels[cal])
        _, dw = predict_heads(ranker, ex.dense[cal], ex.category[cal])
        info["mean_log_dwell"] = float(dw.mean())
    small = None
    if rc.distill_hidden and champion.ranker_small is not None:
        small, dreport = train_distilled(rc, ranker, ex.dense[fit][:, : ranker.n_features], ex.category[fit], rng, show_progress)
        info["distill_report"] = dreport.__dict__
    return ranker, small, calibrator, state, info
