"""`feedrank train` fits the retrieval prior on a held-out tail of the train clicks with
towers trained without that tail (`retrieval.prior_fit: holdout_tail`, the default), or in
sample (`in_sample`); the bench's `two_tower_prior` row goes through the same functions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import feedrank.pipeline.build as build
import feedrank.retrieval.prior as prior_mod
from feedrank.config import load_config
from feedrank.data.synth import WorldConfig, generate_world
from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.build import holdout_tail_towers, prepare, train_model

OVERRIDES = ["retrieval.epochs=1", "ranking.epochs=1", "retrieval.id_buckets=1024", "retrieval.text_buckets=1024",
             "pipeline.ann_k=50", "pipeline.rank_max_candidates=100"]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("priorfit")
    generate_world(root / "world", WorldConfig(n_users=500, n_items=150, n_days=3, activity_mean=3.0, seed=5),
                   progress=False)
    return root / "world"


def _train_rows(prep) -> np.ndarray:
    rows = np.zeros(len(prep.events), dtype=bool)
    rows[prep.split.train_idx] = True
    return rows


def _weights(model) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def test_holdout_towers_see_no_event_at_or_after_the_tail_start(world: Path, monkeypatch):
    cfg = load_config(None, OVERRIDES + ["retrieval.hard_negative_ratio=0.5"])  # impressions reach training too
    prep = prepare(world, cfg, say=quiet)
    train = _train_rows(prep)
    seen = []
    real = build.train_two_tower

    def spy(rcfg, catalog, clicks, *a, **k):
        seen.append((clicks.ts.copy(), k["shown"]))
        return real(rcfg, catalog, clicks, *a, **k)

    monkeypatch.setattr(build, "train_two_tower", spy)
    torch_state = torch.get_rng_state()
    held = holdout_tail_towers(cfg, prep, train, None, show_progress=False, say=quiet)
    assert torch.equal(torch.get_rng_state(), torch_state)  # the stages after it draw what they drew before
    assert held is not None and len(seen) == 1
    clicks = prep.events.click_log(np.flatnonzero(train))
    assert held.fit_from == pytest.approx(float(np.quantile(clicks.ts, 1.0 - cfg.split.test_fraction)))
    click_ts, shown = seen[0]
    assert len(click_ts) == held.head_clicks > 0 and click_ts.max() < held.fit_from
    assert held.tail_clicks == int((clicks.ts >= held.fit_from).sum()) > 0
    assert held.head_clicks + held.tail_clicks == len(clicks.items)
    assert shown is not None and shown.log.ts.max() < held.fit_from

    # changing every event at or after the tail start (items of clicks and impressions) leaves
    # the towers bit-identical; changing one click before it does not
    ev = prep.events
    late = ev.ts >= held.fit_from
    moved = ev.item_idx.copy()
    moved[late] = (moved[late] + 7) % len(prep.catalog)
    torch.rand(1000)  # and whatever drew from the global RNGs before (the towers re-seed)
    held_late = holdout_tail_towers(cfg, replace(prep, events=replace(ev, item_idx=moved)), train, None,
                                    show_progress=False, say=quiet)
    assert held_late.fit_from == held.fit_from
    assert all(np.array_equal(a, b) for a, b in zip(_weights(held.model), _weights(held_late.model)))
    assert np.array_equal(held.item_vecs, held_late.item_vecs)
    early = np.flatnonzero(ev.mask("click") & train & ~late)[:20]
    moved = ev.item_idx.copy()
    moved[early] = (moved[early] + 7) % len(prep.catalog)
    held_early = holdout_tail_towers(cfg, replace(prep, events=replace(ev, item_idx=moved)), train, None,
                                     show_progress=False, say=quiet)
    assert not all(np.array_equal(a, b) for a, b in zip(_weights(held.model), _weights(held_early.model)))


def test_too_few_clicks_on_either_side_falls_back_to_in_sample(world: Path, monkeypatch):
    cfg = load_config(None, OVERRIDES)
    prep = prepare(world, cfg, say=quiet)
    monkeypatch.setattr(build, "MIN_HOLDOUT_CLICKS", 10**9)
    said = []
    assert holdout_tail_towers(cfg, prep, _train_rows(prep), None, show_progress=False, say=said.append) is None
    assert "in sample" in said[-1]


@pytest.mark.parametrize("mode", ["holdout_tail", "in_sample"])
def test_train_fits_the_prior_as_configured(world: Path, tmp_path: Path, monkeypatch, mode: str):
    fits = []
    real_fit = prior_mod.fit_age_prior

    def spy(model, catalog, clicks, *a, **k):
        fits.append((model, k.get("data"), clicks))
        return real_fit(model, catalog, clicks, *a, **k)

    monkeypatch.setattr(prior_mod, "fit_age_prior", spy)
    cfg = load_config(None, OVERRIDES + [f"retrieval.prior_fit={mode}"])
    art = train_model(world, tmp_path / "model", cfg, show_progress=False, say=quiet)
    assert len(fits) == 1
    served_model, data, clicks = fits[0]
    assert served_model is art.two_tower  # the weights are applied to the served towers' logits
    info = load_artifacts(tmp_path / "model").info
    assert info["age_prior_fit"]["fit"] == mode
    ck = tmp_path / "model.checkpoints"  # the served towers' epoch weights, and only theirs
    assert sorted(p.name for p in ck.iterdir() if p.suffix == ".pt") == ["two_tower-epoch1.pt"]
    assert info["age_prior"]["n_clicks"] == info["age_prior_fit"]["n_clicks"] > 0
    if mode == "in_sample":
        assert data is None and info["age_prior"]["tower_weight"] == 1.0
        return
    assert info["age_prior"]["tower_weight"] != 1.0  # fitted with the others on the held-out tail
    assert data.model is not None and data.model is not art.two_tower  # scored by the held-out towers
    assert data.item_vecs.shape == art.item_vectors.shape and not np.allclose(data.item_vecs, art.item_vectors)
    assert data.fit_from == info["age_prior_fit"]["fit_from"]
    assert info["age_prior_fit"]["tail_clicks"] == int((clicks.ts >= data.fit_from).sum())
