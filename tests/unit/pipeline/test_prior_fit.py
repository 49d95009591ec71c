"""`feedrank train` fits the retrieval prior on a held-out tail of the train clicks with
towers trained without that tail (`retrieval.prior_fit: holdout_tail`, the default), or in
sample (`in_sample`); the bench's `two_tower_prior` row goes through the same functions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import feedrank.pipeline.build as build
import feedrank.retrieval.encode as encode_mod
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


def test_train_fits_first_visit_weights_for_users_without_history(world: Path, tmp_path: Path, monkeypatch):
    """``retrieval.cold_user_weights=always``: the weights for a user without history are fitted
    on every click made within ``cold_user_window_hours`` of the user's first click, each
    scored with an empty history; with ``retrieval.popularity_curve=always`` both fits have the
    log1p(clicks)**2 term. The bundle carries both weight sets."""
    calls = []
    real = prior_mod._fit_on_clicks

    def spy(pick, model, catalog, clicks, *a, **k):
        calls.append((pick.copy(), clicks, k))
        return real(pick, model, catalog, clicks, *a, **k)

    monkeypatch.setattr(prior_mod, "_fit_on_clicks", spy)
    cfg = load_config(None, OVERRIDES + ["retrieval.cold_user_weights=always", "retrieval.cold_user_window_hours=2",
                                        "retrieval.popularity_curve=always"])
    train_model(world, tmp_path / "model", cfg, show_progress=False, say=quiet)
    assert len(calls) == 2
    (_, _, main), (pick, clicks, cold) = calls
    assert main.get("pop_curve") and not main.get("no_history")
    assert cold.get("pop_curve") and cold.get("no_history")
    since_first = clicks.ts[pick] - clicks.ts[clicks.starts[clicks.user_codes[pick]]]
    assert since_first.max() <= 2 * 3600.0 and (since_first > 0).any()  # the first visit, not only its first click
    window = clicks.ts <= clicks.ts[clicks.starts[clicks.user_codes]] + 2 * 3600.0
    assert len(pick) == min(2000, int(window.sum()))
    prior = load_artifacts(tmp_path / "model").info["age_prior"]
    assert prior["cold_user"] is not None and "pop2_weight" in prior and "pop2_weight" in prior["cold_user"]
    assert prior_mod.AgePrior.from_json(prior).cold_user is not None

    # an empty history gives the user vector of a user the store knows nothing about
    seen = []
    real_encode = encode_mod.encode_users

    def enc(model, catalog, hist, ts, **k):
        seen.append(hist.copy())
        return real_encode(model, catalog, hist, ts, **k)

    monkeypatch.setattr(encode_mod, "encode_users", enc)
    art = load_artifacts(tmp_path / "model")
    prior_mod.fit_age_prior(art.two_tower, prepare(world, cfg, say=quiet).catalog, clicks, 0.15, 30, art.item_vectors,
                            None, seed=0, cold_users=True, cold_window_s=7200.0)
    assert len(seen) == 2 and (seen[1] == -1).all() and (seen[0] >= 0).any()


@pytest.mark.parametrize("better", ["plain", "bent"])
def test_auto_keeps_what_ranks_the_held_out_clicks_better(world: Path, monkeypatch, better: str):
    """``pop_curve="auto"`` / ``select_cold``: each candidate is scored on clicks none of the
    fits used (``click_hits``), and the better one is served; the comparison is recorded."""
    cfg = load_config(None, OVERRIDES)
    prep = prepare(world, cfg, say=quiet)
    clicks = prep.events.click_log(np.flatnonzero(_train_rows(prep)))
    art = train_model(world, Path(str(world) + "_m") / "model", load_config(None, OVERRIDES + [
        "retrieval.popularity_curve=never", "retrieval.cold_user_weights=never"]), show_progress=False, say=quiet)
    fitted, scored, made = [], [], []  # (kind, rows), scored rows, (kind, prior) of every fit in order
    real_fit, real_hits = prior_mod._fit_on_clicks, prior_mod.click_hits

    def fit(rows, *a, **k):
        kind = "cold" if k.get("no_history") else "main"
        fitted.append((kind, set(rows.tolist())))
        made.append((kind, real_fit(rows, *a, **k)))
        return made[-1][1]

    def hits(pr, model, vecs, catalog, clk, rows, *a, **k):
        scored.append(set(rows.tolist()))
        got = real_hits(pr, model, vecs, catalog, clk, rows, *a, **k)
        assert set(got) == {10, 100} and all(h.dtype == bool and len(h) == len(rows) for h in got.values())
        mains, colds = [p for kind, p in made if kind == "main"], [p for kind, p in made if kind == "cold"]
        challenger = pr is colds[0] if k.get("no_history") else pr is mains[1]  # the cold trial / the curve's fit
        win = challenger == (better == "bent")
        return {kk: np.full(len(rows), win) if kk == 100 else np.arange(len(rows)) % 3 == 0 for kk in got}

    monkeypatch.setattr(prior_mod, "_fit_on_clicks", fit)
    monkeypatch.setattr(prior_mod, "MIN_COLD_USER_CLICKS", 5)  # a small world: few first visits in the tail
    monkeypatch.setattr(prior_mod, "MIN_SELECTION_CLICKS", 5)
    monkeypatch.setattr(prior_mod, "click_hits", hits)
    prior = prior_mod.fit_age_prior(art.two_tower, prep.catalog, clicks, 0.15, 30, art.item_vectors, None, seed=0,
                                    pop_curve="auto", cold_users=True, cold_window_s=6 * 3600.0, select_cold=True,
                                    n_clicks=150)  # leaves unfitted tail clicks (2,000 would take every one)
    sel = prior.selection
    assert set(sel) == {"popularity_curve", "cold_user"}
    assert sel["popularity_curve"]["kept"] == (better == "bent") and sel["cold_user"]["kept"] == (better == "bent")
    assert (prior.cold_user is not None) == (better == "bent")
    # each comparison scores clicks its challenger (and the incumbent) were not fitted on, both sides the same clicks
    kinds = [kind for kind, _ in fitted]
    n_main = kinds.count("main")  # 3 when the tail is too small to leave unfitted clicks: the kept form is refitted
    assert kinds[:n_main] == ["main"] * n_main and n_main in (2, 3) and set(kinds[n_main:]) == {"cold"}
    assert len(scored) == 4 and scored[0] == scored[1] and scored[2] == scored[3]
    assert scored[0] and not scored[0] & (fitted[0][1] | fitted[1][1])
    served_main = fitted[n_main - 1][1] if n_main == 3 else fitted[0][1]  # (the curve's fit uses the same clicks)
    assert scored[2] and not scored[2] & (served_main | fitted[n_main][1])  # not the main weights', not the trial's
    # kept, the cold weights served are refitted on every first-visit click (held-out ones too)
    assert len(made) == n_main + (2 if better == "bent" else 1)
    if better == "bent":
        assert prior.cold_user is made[-1][1] and fitted[-1][1] & scored[2]
    assert prior_mod.AgePrior.from_json(prior.to_json()).selection == prior.to_json()["selection"]


def test_click_recall_ranks_each_click_among_the_items_live_then_minus_the_users_earlier_clicks(world: Path, tmp_path: Path):
    cfg = load_config(None, OVERRIDES + ["retrieval.popularity_curve=never", "retrieval.cold_user_weights=never"])
    art = train_model(world, tmp_path / "model", cfg, show_progress=False, say=quiet)
    prep = prepare(world, cfg, say=quiet)
    clicks = prep.events.click_log(np.flatnonzero(_train_rows(prep)))
    prior = prior_mod.AgePrior.from_json(art.info["age_prior"])
    pick = np.sort(np.random.default_rng(3).choice(len(clicks.items), size=60, replace=False))
    got = prior_mod.click_recall(prior, art.two_tower, art.item_vectors, prep.catalog, clicks, pick,
                                 cfg.retrieval.history_len, None, ks=(1, 10, 100))
    from feedrank.retrieval.encode import encode_users

    pub = np.nan_to_num(prep.catalog.published_at, nan=-np.inf)
    want = {1: 0, 10: 0, 100: 0}
    for q in pick:
        u, t, item = clicks.user_codes[q], float(clicks.ts[q]), clicks.items[q]
        hist = clicks.histories(np.array([u]), np.array([t]), cfg.retrieval.history_len)
        uvec = encode_users(art.two_tower, prep.catalog, hist, np.array([t]), item_vecs=art.item_vectors)
        counts = np.bincount(clicks.items[clicks.ts < t], minlength=len(prep.catalog)).astype(np.float64)
        s = prior.scores(uvec, art.item_vectors, prep.catalog.published_at, t, clicks=counts,
                         affinity=prior.user_affinity(hist, prep.catalog.cat_idx) if prior.category_weight else None,
                         categories=prep.catalog.cat_idx)[0]
        ok = pub <= t
        ok[hist[0][hist[0] >= 0]] = False
        ahead = int((ok & (s > s[item])).sum())
        for k in want:
            want[k] += ahead < k
    assert got == {k: v / len(pick) for k, v in want.items()}
    assert 0 < got[100] and got[1] <= got[10] <= got[100] <= 1


def test_prefer_keeps_the_challenger_only_beyond_one_standard_error():
    n = 400
    base = {10: np.zeros(n, bool), 100: np.arange(n) % 2 == 0}
    tie = {10: np.zeros(n, bool), 100: np.arange(n) % 2 == 1}  # as many hits, on other clicks
    assert prior_mod.prefer(tie, base)[0] is False
    a_little = {10: np.zeros(n, bool), 100: (np.arange(n) % 2 == 0) | (np.arange(n) == 1)}  # one click more
    kept, info = prior_mod.prefer(a_little, base)
    assert kept is False and 0 < info["gain"] <= info["standard_error"]
    clearly = {10: np.arange(n) % 4 == 0, 100: (np.arange(n) % 2 == 0) | (np.arange(n) % 5 == 1)}
    kept, info = prior_mod.prefer(clearly, base)
    assert kept is True and info["gain"] > info["standard_error"] and info["held_out_clicks"] == n
    assert prior_mod.prefer(base, clearly)[0] is False


@pytest.fixture(scope="module")
def fitted_world(world: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = load_config(None, OVERRIDES + ["retrieval.popularity_curve=never", "retrieval.cold_user_weights=never"])
    art = train_model(world, tmp_path_factory.mktemp("fw") / "model", cfg, show_progress=False, say=quiet)
    prep = prepare(world, cfg, say=quiet)
    return art, prep, prep.events.click_log(np.flatnonzero(_train_rows(prep)))


@pytest.mark.parametrize("n_clicks", [150, 2000])  # 2000: the whole tail, so a quarter is held out and refitted
def test_auto_that_keeps_nothing_serves_what_never_serves(fitted_world, monkeypatch, n_clicks: int):
    art, prep, clicks = fitted_world
    args = (art.two_tower, prep.catalog, clicks, 0.15, 30, art.item_vectors, None)
    never = prior_mod.fit_age_prior(*args, seed=0, n_clicks=n_clicks, category=True)
    monkeypatch.setattr(prior_mod, "MIN_SELECTION_CLICKS", 5)
    monkeypatch.setattr(prior_mod, "click_hits", lambda pr, *a, **k: {kk: np.zeros(len(a[4]), bool) for kk in (10, 100)})
    auto = prior_mod.fit_age_prior(*args, seed=0, n_clicks=n_clicks, category=True, pop_curve="auto")
    assert auto.selection["popularity_curve"]["kept"] is False
    assert replace(auto, selection=None) == never


def test_auto_on_a_handful_of_clicks_skips_the_selections(fitted_world):
    art, prep, clicks = fitted_world
    few = prep.events.click_log(np.flatnonzero(_train_rows(prep) & prep.events.mask("click"))[:6])
    prior = prior_mod.fit_age_prior(art.two_tower, prep.catalog, few, 0.15, 30, art.item_vectors, None, seed=0,
                                    pop_curve="auto", cold_users=True, cold_window_s=3600.0, select_cold=True)
    assert prior.selection["popularity_curve"]["kept"] is False and "why" in prior.selection["popularity_curve"]
    assert prior.pop2_weight == 0.0 and prior.cold_user is None
    assert "Infinity" not in json.dumps(prior.to_json())


def test_click_hits_on_a_catalogue_sample_estimates_the_exact_recall(fitted_world):
    art, prep, clicks = fitted_world
    prior = prior_mod.AgePrior(0.0, 0.15, 0.0, pop_weight=1.0)
    pick = np.arange(len(clicks.items))
    exact = prior_mod.click_recall(prior, art.two_tower, art.item_vectors, prep.catalog, clicks, pick, 30, None,
                                   ks=(10, 30))
    n = len(prep.catalog)
    sampled = [prior_mod.click_recall(prior, art.two_tower, art.item_vectors, prep.catalog, clicks, pick, 30, None,
                                      ks=(10, 30), max_items=n // 2, seed=s) for s in range(4)]
    for k in (10, 30):
        assert abs(np.mean([r[k] for r in sampled]) - exact[k]) < 0.05, (k, exact, sampled)
