"""Train every stage from a dataset folder and write one model bundle.

    art = train_model("var/world", "var/model", cfg)

Steps (each prints progress): load + validate -> time split -> vocabularies and catalogue
-> two-tower on train clicks -> item vectors + ANN index -> retrieval prior (by default
fitted on the newest train clicks with a second two-tower trained without them,
``retrieval.prior_fit``) -> ranker on train impressions
(point-in-time features) -> offline evaluation on the test side -> online state snapshot
over all events -> bundle.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from feedrank.config import FeedrankConfig, config_to_dict
from feedrank.data.dataset import Dataset, load_dataset
from feedrank.data.split import TimeSplit, check_no_overlap, split_to_dict, time_split
from feedrank.errors import SchemaError
from feedrank.features.catalog import ItemCatalog
from feedrank.features.vocab import Vocab
from feedrank.pipeline.artifacts import ModelArtifacts, OnlineSnapshot, save_artifacts
from feedrank.pipeline.examples import EventArrays, train_ranking_stage
from feedrank.ranking.calibration import Calibrator
from feedrank.retrieval.encode import encode_items
from feedrank.retrieval.index import IndexParams, build_index, check_recall
from feedrank.retrieval.train import ShownNotClicked, train_two_tower
from feedrank.training import checkpoint as ckpt
from feedrank.training import distributed as dist
from feedrank.training.common import seed_everything, setup_threads

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A dataset made ready for training or evaluation."""

    dataset: Dataset
    events: EventArrays
    split: TimeSplit
    vocabs: dict[str, Vocab]
    catalog: ItemCatalog
    items: Any  # pandas DataFrame


def prepare(data_dir: str | Path, cfg: FeedrankConfig, vocabs: dict[str, Vocab] | None = None,
            say: Callable[[str], None] = print) -> Prepared:
    """Load, validate and split a dataset; build (or reuse) vocabularies and the catalogue."""
    t = time.perf_counter()
    ds = load_dataset(data_dir)
    events = ds.events_frame()
    items = ds.items_frame()
    say(f"loaded {data_dir}: {len(items):,} items, {len(events):,} events, source={ds.meta.source} ({time.perf_counter() - t:.1f}s)")
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    split = time_split(events, cfg.split.test_fraction, straddle=cfg.split.straddle)
    check_no_overlap(split, events)
    if vocabs is None:
        vocabs = {"category": Vocab.build("category", items["category"]), "subcategory": Vocab.build("subcategory", items["subcategory"], max_size=5000)}
    catalog = ItemCatalog.build(items, vocabs, cfg.retrieval.id_buckets, cfg.retrieval.text_buckets)
    ev = EventArrays.build(events, catalog)
    say(f"split at {split_to_dict(split)['boundary_iso']}: train {split.train.n_events:,} events, test {split.test.n_events:,} events")
    return Prepared(ds, ev, split, vocabs, catalog, items)


def snapshot(ev: EventArrays, n_items: int, history_len: int) -> OnlineSnapshot:
    """The online state at the end of the events: every user's last clicks and counters."""
    clicks = ev.click_log()
    hist = clicks.final_histories(history_len)
    n_clicks = (clicks.ends - clicks.starts).astype(np.int64)
    active = n_clicks > 0
    imp = ev.mask("impression")
    return OnlineSnapshot(
        user_ids=ev.user_ids[active].astype(str),
        histories=hist[active],
        user_clicks=n_clicks[active],
        item_impressions=np.bincount(ev.item_idx[imp], minlength=n_items).astype(np.float64),
        item_clicks=np.bincount(ev.item_idx[ev.mask("click")], minlength=n_items).astype(np.float64),
    )


def learn_max_item_age(hours: float, clicks, catalog: ItemCatalog) -> float | None:
    """The retrieval age limit in seconds (None = no limit).

    ``hours`` > 0 is taken as given; -1 learns it: the age by which 99% of training clicks
    happened, times 1.5 for headroom (news: days; a film catalogue: effectively none)."""
    if hours == 0:
        return None
    if hours > 0:
        return hours * 3600.0
    age = clicks.ts - catalog.published_at[clicks.items]
    age = age[np.isfinite(age)]
    if len(age) < 20:
        return None
    limit = float(np.quantile(np.maximum(age, 0.0), 0.99)) * 1.5
    span = float(clicks.ts.max() - clicks.ts.min())
    return None if limit >= span else max(limit, 3600.0)


def item_content(cfg: FeedrankConfig, catalog: ItemCatalog, say: Callable[[str], None] = print) -> tuple[np.ndarray | None, str]:
    """(N, Dc) float32 title content vectors for the catalogue (None when disabled), and
    the encoder used (``features.content.title_content``; cached on disk by content hash)."""
    from feedrank.features.content import title_content

    return title_content(cfg.retrieval.content_encoder, cfg.retrieval.content_cache_dir, catalog.titles, say)


def shown_not_clicked(ev: EventArrays, rows_mask: np.ndarray) -> ShownNotClicked | None:
    """The hard-negative pool: impressions in ``rows_mask`` without a click (None: no impressions)."""
    rows = np.flatnonzero(rows_mask & ev.mask("impression") & (ev.request_codes >= 0))
    if not len(rows):
        return None
    rows = rows[ev.impression_labels(rows) == 0]
    return ShownNotClicked.build(ev.user_codes[rows], ev.ts[rows], ev.item_idx[rows], ev.n_users)


HOLDOUT_CHECKPOINTS = "prior_holdout"  # sub-folder of the checkpoint folder for the held-out towers' step checkpoints
MIN_HOLDOUT_CLICKS = 50  # fewer train clicks before (or in) the held-out tail: the prior is fitted in sample


@dataclass(frozen=True)
class HoldoutTowers:
    """Two-tower trained on the training clicks before ``fit_from`` (the newest
    ``split.test_fraction`` of the train clicks are held out), its item vectors, and the
    click counts on each side. The prior's weights are fitted on the held-out tail with these
    towers: the served towers have seen (memorised) the clicks a fit on them would score,
    which pulls the weights of the age and popularity terms towards 0."""

    fit_from: float
    model: Any
    item_vecs: np.ndarray
    head_clicks: int
    tail_clicks: int
    seconds: float

    def fit_data(self, **more: Any) -> Any:
        """``PriorFitData`` for ``fit_age_prior``: the tail, scored by these towers (+ ``more`` fields)."""
        from feedrank.retrieval.prior import PriorFitData

        return PriorFitData(fit_from=self.fit_from, model=self.model, item_vecs=self.item_vecs, **more)

    def to_json(self) -> dict[str, Any]:
        return {"fit_from": self.fit_from, "head_clicks": self.head_clicks, "tail_clicks": self.tail_clicks,
                "towers_s": round(self.seconds, 1)}


def events_before(ev: EventArrays, t: float) -> EventArrays:
    """The events strictly before ``t`` (same user codes and ids)."""
    keep = np.flatnonzero(ev.ts < t)
    return EventArrays(ev.ts[keep], ev.user_codes[keep], ev.user_ids, ev.item_idx[keep], ev.kind[keep],
                       ev.position[keep], ev.request_codes[keep], None if ev.dwell_ms is None else ev.dwell_ms[keep])


def holdout_tail_towers(cfg: FeedrankConfig, prep: Prepared, train_rows: np.ndarray, content: np.ndarray | None,
                        show_progress: bool = True, say: Callable[[str], None] = print,
                        checkpoint_sub: str | None = None) -> HoldoutTowers | None:
    """Train the towers the prior is fitted with: on the events of ``train_rows`` strictly
    before the tail start (the ``1 - split.test_fraction`` quantile of the train clicks'
    times), same config and seed as the served towers (every RNG re-seeded with
    ``training.seed`` first, so they do not depend on what ran before; torch's, numpy's and
    python's global RNG states are restored after, so the stages that follow are unchanged).
    No click or impression at or after the tail start reaches them. Under an active
    checkpoint policy their step checkpoints go to ``<policy folder>/<checkpoint_sub>``
    (never mixed with the served towers'). None (with a message) when either side has fewer
    than ``MIN_HOLDOUT_CLICKS`` clicks: the caller then fits in sample."""
    ev, catalog = prep.events, prep.catalog
    clicks = ev.click_log(np.flatnonzero(train_rows))
    if not len(clicks.items):
        return None
    fit_from = float(np.quantile(clicks.ts, 1.0 - cfg.split.test_fraction))
    before = events_before(ev, fit_from)  # the towers' whole view: even impression labels ignore later clicks
    head_rows = train_rows[ev.ts < fit_from]
    head = before.click_log(np.flatnonzero(head_rows))
    n_head, n_tail = len(head.items), int((clicks.ts >= fit_from).sum())
    if min(n_head, n_tail) < MIN_HOLDOUT_CLICKS:
        say(f"retrieval prior: {n_head} clicks before the held-out tail and {n_tail} in it "
            f"(< {MIN_HOLDOUT_CLICKS}): fitted in sample instead")
        return None
    policy = ckpt.active_policy()
    scope = contextlib.nullcontext() if policy is None or checkpoint_sub is None else \
        ckpt.checkpointing(policy.directory / checkpoint_sub, policy.every_steps, policy.resume)
    state = ckpt.global_rng_state()
    t = time.perf_counter()
    try:
        with scope:
            model, _ = train_two_tower(cfg.retrieval, catalog, head, len(prep.vocabs["category"]),
                                       len(prep.vocabs["subcategory"]), seed_everything(cfg.training.seed),
                                       show_progress, content=content, shown=shown_not_clicked(before, head_rows))
    finally:
        ckpt.set_global_rng_state(state)
    out = HoldoutTowers(fit_from, model, encode_items(model, catalog), n_head, n_tail, time.perf_counter() - t)
    say(f"retrieval prior: towers without the newest {n_tail:,} train clicks (from {fit_from:.0f}) trained on "
        f"{n_head:,} in {out.seconds:.1f}s")
    return out


def fit_retrieval_prior(cfg: FeedrankConfig, model: Any, catalog: ItemCatalog, clicks: Any, item_vecs: np.ndarray,
                        max_age_s: float | None, holdout: HoldoutTowers | None, **fit: Any) -> Any:
    """The retrieval prior ``feedrank train`` serves (an ``AgePrior``): age + popularity
    weights and the tower logit's weight fitted on the held-out tail with ``holdout``'s
    towers, or age + popularity in sample (the newest half of ``clicks`` with the served
    ``model``, tower weight 1) when ``holdout`` is None; both with the category term
    (``category``, on unless ``fit`` turns it off). The weights are then applied to the
    served towers' logits. ``fit``: further ``fit_age_prior`` arguments (``popularity``,
    ``cold_users``, ``new_items``, ``category``, ``category_estimator`` (default:
    ``retrieval.category_estimator``), ``data``...)."""
    from feedrank.retrieval.prior import fit_age_prior

    data = fit.pop("data", None)
    fit.setdefault("category", True)  # the user's category-share term (docs/retrieval.md, "Category term")
    fit.setdefault("category_estimator", cfg.retrieval.category_estimator)  # how that share is estimated
    r = cfg.retrieval
    fit.setdefault("pop_curve", {"never": False, "always": True, "auto": "auto"}[r.popularity_curve])  # log1p(clicks)**2
    fit.setdefault("cold_users", r.cold_user_weights != "never")  # weights for users without history (first visit)
    fit.setdefault("select_cold", r.cold_user_weights == "auto")
    fit.setdefault("cold_window_s", r.cold_user_window_hours * 3600.0)
    if holdout is not None:
        data = holdout.fit_data() if data is None else replace(data, fit_from=holdout.fit_from, model=holdout.model,
                                                                item_vecs=holdout.item_vecs)
        fit.setdefault("fit_tower_weight", True)
    return fit_age_prior(model, catalog, clicks, cfg.retrieval.temperature, cfg.retrieval.history_len, item_vecs,
                         max_age_s, cfg.training.seed, data=data, **fit)


def describe_category_share(prior: Any) -> str:
    """How the prior's category term estimates the user's category preference, in words."""
    share = prior.category_estimator
    if not prior.category_weight:
        return "no category term"
    if share is None:
        return "the towers' (every click 1, uniform smoothing 1)"
    return (f"recency decay {share.decay:g} per click, smoothing {share.strength:g} towards "
            f"{'uniform' if share.population is None else 'the population'}")


Evaluator = Callable[..., dict]  # (ModelArtifacts, Prepared, say=...) -> metrics dict


def train_model(data_dir: str | Path, out: str | Path, cfg: FeedrankConfig, show_progress: bool = True,
                evaluator: Evaluator | None = None, say: Callable[[str], None] = print) -> ModelArtifacts:
    """Train every stage on ``data_dir`` and write the bundle to ``out``.

    ``evaluator`` (e.g. ``evaluation.offline.evaluate_prepared``) scores the model on the
    test side before it is saved; its result goes into the manifest as ``metrics``. It is
    passed in so that pipeline never imports evaluation (which builds on pipeline)."""
    t_all = time.perf_counter()
    setup_threads(cfg.training.threads)
    rng = seed_everything(cfg.training.seed)
    prep = prepare(data_dir, cfg, say=say)
    ev, split, catalog = prep.events, prep.split, prep.catalog
    n_cat, n_sub = len(prep.vocabs["category"]), len(prep.vocabs["subcategory"])

    train_rows = np.zeros(len(ev), dtype=bool)
    train_rows[split.train_idx] = True
    clicks = ev.click_log(np.flatnonzero(train_rows))
    if len(clicks.items) < 2:
        raise SchemaError(f"{data_dir}: the train split has {len(clicks.items)} clicks; training needs clicks")
    say(f"two-tower: {len(clicks.items):,} train clicks")
    content, content_kind = item_content(cfg, catalog, say)
    shown = shown_not_clicked(ev, train_rows)
    ckpt_dir = Path(out).parent / f"{Path(out).name}.checkpoints"
    tt, tt_report = train_two_tower(cfg.retrieval, catalog, clicks, n_cat, n_sub, rng, show_progress, content=content,
                                    shown=shown, checkpoint_dir=ckpt_dir)
    say(f"two-tower trained: loss {tt_report.final_loss:.3f} in {tt_report.seconds:.1f}s (checkpoints in {ckpt_dir})")

    max_age_s = learn_max_item_age(cfg.retrieval.max_item_age_hours, clicks, catalog)
    say("retrieval age limit: " + ("none" if max_age_s is None else f"{max_age_s / 3600:.1f} h (items older are not retrieved)"))
    vectors = encode_items(tt, catalog)
    index = build_index(vectors, cfg.retrieval.index, seed=cfg.training.seed, params=IndexParams.from_config(cfg.retrieval))
    index_recall = check_recall(index, vectors, cfg.retrieval.recall_floor, rng)  # raises IndexRejected below the floor
    say(f"index: {index.kind} over {len(index):,} items, recall@100 vs exact {index_recall:.3f} (floor {cfg.retrieval.recall_floor})")
    age_prior, prior_fit = None, None
    if cfg.retrieval.age_prior:  # freshness prior of the retrieval score (retrieval/prior.py; own seeds, rng untouched)
        holdout = None
        if cfg.retrieval.prior_fit == "holdout_tail":
            holdout = holdout_tail_towers(cfg, prep, train_rows, content, show_progress, say,
                                          checkpoint_sub=HOLDOUT_CHECKPOINTS)
        prior = fit_retrieval_prior(cfg, tt, catalog, clicks, vectors, max_age_s, holdout)
        age_prior = prior.to_json()
        prior_fit = {"fit": "in_sample" if holdout is None else "holdout_tail", "n_clicks": prior.n_clicks,
                     **({} if holdout is None else holdout.to_json())}
        say(f"retrieval prior ({prior_fit['fit']}): w_age = {prior.weight:.4f} per day, "
            f"w_pop = {prior.pop_weight:.4f} per log click, w_pop2 = {prior.pop2_weight:.4f} per squared log click, "
            f"w_cat = {prior.category_weight:.4f} per log category share, "
            f"tower logit x{prior.tower_weight:.3f}; category share: {describe_category_share(prior)}")
        for what, sel in (prior.selection or {}).items():
            say(f"retrieval prior, {what.replace('_', ' ')}: {'kept' if sel['kept'] else 'not kept'} "
                f"(held-out recall@100 / @10 on {sel.get('held_out_clicks', 0)} clicks: "
                + (", ".join(f"{k} {v['recall@100']:.4f} / {v['recall@10']:.4f}" for k, v in sel.items()
                             if isinstance(v, dict)) or sel.get("why", ""))
                + (f"; gain in hits@10 + hits@100 per click {sel['gain']:+.4f}, "
                   f"standard error {sel['standard_error']:.4f}" if "gain" in sel else "") + ")")
        cold = prior.cold_user
        if cold is not None:
            say(f"retrieval prior, users without history (their first {cfg.retrieval.cold_user_window_hours:g} h): "
                f"w_age = {cold.weight:.4f} per day, w_pop = {cold.pop_weight:.4f}, w_pop2 = {cold.pop2_weight:.4f}, "
                f"tower logit x{cold.tower_weight:.3f} ({cold.n_clicks} clicks)")

    n_imp_train = int(train_rows[ev.mask("impression")].sum())
    prior_ctr = float(train_rows[ev.mask("click")].sum() / max(n_imp_train, 1)) if n_imp_train else 0.05
    prior_ctr = float(np.clip(prior_ctr, 1e-4, 0.9))
    stage = train_ranking_stage(cfg.ranking, ev, train_rows, catalog, prep.items, tt, vectors, n_cat,
                                cfg.retrieval.history_len, prior_ctr, rng, show_progress, say=say)
    ranker = None if stage is None else stage.ranker
    rk_report = None if stage is None else stage.info["train_report"]
    if stage is None:
        say("ranker: no impressions in this data; feeds will be ordered by retrieval (tier 'reduced')")

    art = ModelArtifacts(
        cfg=cfg, vocabs=prep.vocabs, items=prep.items, catalog=catalog, two_tower=tt, item_vectors=vectors, index=index,
        ranker=ranker, snapshot=snapshot(ev, len(catalog), cfg.retrieval.history_len),
        ranker_small=None if stage is None else stage.small,
        calibrator=Calibrator() if stage is None else stage.calibrator,
        engagement=None if stage is None else stage.state,
        info={
            "ranking": None if stage is None else {k: v for k, v in stage.info.items() if k != "train_report"},
            "prior_ctr": prior_ctr,
            "max_item_age_s": max_age_s,
            "dataset": {"path": str(data_dir), "source": prep.dataset.meta.source, "n_items": len(catalog), "n_events": len(ev)},
            "split": split_to_dict(split),
            "index_recall_at_100": index_recall,
            "age_prior": age_prior,
            "age_prior_fit": prior_fit,
            "recall_floor": cfg.retrieval.recall_floor,
            "content_encoder": content_kind,
            "train_reports": {"two_tower": tt_report.__dict__, "ranker": rk_report},
            "config": config_to_dict(cfg),
        },
    )
    if not dist.is_main():  # data-parallel run: rank 0 evaluates and writes the bundle
        return art
    if evaluator is not None:
        art.info["metrics"] = evaluator(art, prep, say=say)
    manifest = save_artifacts(art, Path(out))
    policy = ckpt.active_policy()
    if policy is not None:  # the held-out towers' step checkpoints (the caller clears the served towers')
        ckpt.clear_step_checkpoints(policy.directory / HOLDOUT_CHECKPOINTS)
    say(f"model {manifest.version} written to {out} ({time.perf_counter() - t_all:.1f}s in all)")
    return art
