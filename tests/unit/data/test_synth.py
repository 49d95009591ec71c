"""The synthetic world: determinism, validity, and that its planted structure is in the logs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from feedrank.data.dataset import load_dataset
from feedrank.data.synth import LoggingPolicy, World, WorldConfig, WorldTruth, generate_world
from feedrank.errors import NotFound, SchemaError

SMALL = WorldConfig(n_users=600, n_items=300, n_days=3, seed=5, activity_mean=0.5)
# Enough clicks for the statistical checks, still ~1 s to generate.
MEDIUM = WorldConfig(n_users=4_000, n_items=1_500, n_days=10, seed=11, activity_mean=1.0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "world"
    generate_world(out, MEDIUM, progress=False)
    return out


@pytest.fixture(scope="module")
def logs(world_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, WorldTruth]:
    """(impressions with 'clicked' and truth columns, all events, truth)."""
    ds = load_dataset(world_dir)
    truth = WorldTruth.load(world_dir)
    ev = ds.events_frame()
    imp = ev[ev.kind == "impression"].copy()
    clicked = set(zip(ev.request_id[ev.kind == "click"], ev.position[ev.kind == "click"]))
    imp["clicked"] = [k in clicked for k in zip(imp.request_id, imp.position)]
    imp["a"] = truth.attractiveness(imp.user_id.values, imp.item_id.values, imp.ts.values)
    imp["p"] = truth.click_probability(imp.user_id.values, imp.item_id.values, imp.ts.values, imp.position.values)
    cats = {c: k for k, c in enumerate(truth.category_names)}
    imp["cat"] = [cats[c] for c in truth.item_category(imp.item_id.values)]
    return imp, ev, truth


# ---------------------------------------------------------------------------- determinism
def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(a, SMALL, progress=False)
    generate_world(b, SMALL, progress=False)
    generate_world(c, replace(SMALL, seed=6), progress=False)
    for name in ("events.parquet", "items.parquet", "users.parquet", "truth/world.npz", "truth/world.json"):
        assert _sha(a / name) == _sha(b / name), name
    assert _sha(a / "events.parquet") != _sha(c / "events.parquet")
    assert _sha(a / "items.parquet") != _sha(c / "items.parquet")


# ---------------------------------------------------------------------------- validity
def test_dataset_validates_and_is_well_formed(world_dir: Path, logs) -> None:
    ds = load_dataset(world_dir)  # validation on: raises SchemaError on any problem
    imp, ev, truth = logs
    start, end = truth.period
    assert ds.meta.source == "synthetic" and ds.meta.n_items == MEDIUM.n_items
    assert ds.meta.extra["config"]["seed"] == MEDIUM.seed
    assert set(ev.kind) == {"impression", "click", "dwell", "hide"}
    assert ev.ts.min() >= start and ev.ts.max() < end
    assert np.all(np.diff(ev.ts.values) >= 0), "events are appended in time order"
    assert ev.event_id.is_unique
    assert ev.user_id.str.fullmatch(r"u\d+").all() and ev.item_id.str.fullmatch(r"i\d+").all()
    # every click/dwell/hide refers to a shown slot; dwell only on dwell events
    shown = set(zip(imp.request_id, imp.position, imp.item_id))
    fb = ev[ev.kind != "impression"]
    assert all(k in shown for k in zip(fb.request_id, fb.position, fb.item_id))
    assert ev.dwell_ms.notna().eq(ev.kind == "dwell").all()
    assert (ev.dwell_ms[ev.kind == "dwell"] > 0).all()
    assert (ev.kind == "click").sum() == (ev.kind == "dwell").sum()
    # feeds: positions 0..feed_len-1, distinct items within a request, shown only when live
    assert imp.position.between(0, MEDIUM.feed_len - 1).all()
    assert not imp.duplicated(["request_id", "item_id"]).any()
    items = ds.items_frame().set_index("item_id")
    age = imp.ts.values - items.loc[imp.item_id, "published_at"].values
    assert (age >= 0).all() and (age < MEDIUM.max_age_s).all()
    # items: ids, categories, titles, creator groups agree with the truth
    assert items.index.str.fullmatch(r"i\d+").all() and items.creator.str.fullmatch(r"c\d+").all()
    assert items.title.str.split().str.len().between(5, 10).all()
    assert set(items.creator_group) == {"new", "established"}
    ids = items.index.values
    assert (truth.item_creator_group(ids) == items.creator_group.values).all()
    assert (truth.item_category(ids) == items.category.values).all()
    assert (items.published_at < start).any(), "a backlog exists before the start"
    assert ds.users is not None and ds.users.num_rows == MEDIUM.n_users
    assert {"user_id", "activity", "signup_at"} <= set(ds.users.column_names)


def test_propensities_in_unit_interval(logs) -> None:
    imp, ev, _ = logs
    assert ev.propensity.notna().all()
    assert ((ev.propensity > 0) & (ev.propensity <= 1)).all()


def test_logged_propensities_are_exact_conditional_slot_probabilities() -> None:
    """IPS identity: for slot k, E[1 / propensity] = number of live items not in slots < k."""
    world = World.build(WorldConfig(n_users=5, n_items=80, n_days=1, seed=3, feed_len=6))
    policy = LoggingPolicy(world)
    rng = np.random.default_rng(0)
    # make popularity and user history non-uniform first
    clicked = rng.integers(0, 80, 300)
    policy.observe_clicks(np.zeros(300, dtype=np.int64), clicked)
    policy.end_day()
    t = world.config.start + 20 * 3600.0
    t_ms = np.full(30_000, int(t * 1000), dtype=np.int64)
    feeds = policy.sample(rng, np.zeros(len(t_ms), dtype=np.int64), t_ms)
    n_live = int(((world.item_pub <= t) & (world.item_pub > t - world.config.max_age_s)).sum())
    assert n_live > 10
    assert len(feeds.item) == len(t_ms) * 6
    for k in range(6):
        inv = 1.0 / feeds.propensity[feeds.position == k]
        assert abs(inv.mean() - (n_live - k)) < 0.05 * (n_live - k), k
    # slot-0 propensity equals the empirical frequency of each item at slot 0
    first = feeds.item[feeds.position == 0]
    prop0 = pd.Series(feeds.propensity[feeds.position == 0]).groupby(first).first()
    freq = pd.Series(first).value_counts(normalize=True).reindex(prop0.index)
    assert np.allclose(freq.values, prop0.values, atol=0.01)


# ---------------------------------------------------------------------------- planted structure
def test_clicks_match_truth_click_probability_per_position(logs) -> None:
    imp, _, truth = logs
    g = imp.groupby("position").agg(clicks=("clicked", "sum"), expected=("p", "sum"), var=("p", lambda p: (p * (1 - p)).sum()))
    z = (g.clicks - g.expected) / np.sqrt(g["var"])
    assert (z.abs() < 4.5).all(), g.assign(z=z)
    total_z = (g.clicks.sum() - g.expected.sum()) / np.sqrt(g["var"].sum())
    assert abs(total_z) < 4.0
    # click rate falls with position like exam(pos) once attractiveness is divided out
    ratio = imp.groupby("position").clicked.mean() / imp.groupby("position").a.mean()
    exam = truth.examination(ratio.index.values)
    assert np.allclose(ratio.values / ratio.values[0], exam, atol=0.12)
    assert ratio.values[0] > 1.8 * ratio.values[-1]


def test_users_focused_on_one_topic_click_mostly_that_topic(logs) -> None:
    imp, _, truth = logs
    pref = truth.user_preferences(imp.user_id.values, imp.ts.values)
    focused = pref.max(axis=1) > 0.7  # at the time of the impression (prefs drift)
    top = pref.argmax(axis=1)
    on_top = imp.cat.values == top
    sel = focused & imp.clicked.values
    assert sel.sum() > 100
    click_share = on_top[sel].mean()
    shown_share = on_top[focused].mean()
    assert click_share > 0.7 and click_share > 2.5 * shown_share, (click_share, shown_share)


def test_preference_drift_shows_in_clicks(logs) -> None:
    imp, _, truth = logs
    clicks = imp[imp.clicked]
    p0, p1 = truth.user_preferences_start_end(clicks.user_id.values)
    rows = np.arange(len(clicks))
    gain = p1[rows, clicks.cat.values] - p0[rows, clicks.cat.values]  # how much the clicked topic gains
    start, end = truth.period
    frac = (clicks.ts.values - start) / (end - start)
    early, late = gain[frac < 0.3], gain[frac > 0.7]
    assert len(early) > 200 and len(late) > 200
    assert late.mean() - early.mean() > 0.05, (early.mean(), late.mean())


def test_fresh_items_are_more_attractive(logs) -> None:
    imp, _, truth = logs
    items = load_dataset(truth.root.parent, validate=False).items_frame().set_index("item_id")
    age_h = (imp.ts.values - items.loc[imp.item_id, "published_at"].values) / 3600
    young, old = imp.clicked[age_h < 24].mean(), imp.clicked[age_h > 72].mean()
    assert young > 1.5 * old


# ---------------------------------------------------------------------------- truth API
def test_truth_api(world_dir: Path) -> None:
    truth = WorldTruth.load(world_dir)
    users = np.array(["u0", "u1", "u2"])
    items = np.array(["i5", "i6", "i7"], dtype=object)
    t = truth.period[0] + 86_400.0
    a = truth.attractiveness(users, items, t)
    assert a.shape == (3,) and ((a > 0) & (a < 1)).all()
    assert np.allclose(truth.attractiveness(users, items, np.full(3, t)), a)
    assert np.allclose(truth.attractiveness(np.array([0, 1, 2]), np.array([5, 6, 7]), t), a)
    assert np.allclose(truth.examination(np.arange(3)), (1 / np.arange(1, 4)) ** truth.eta)
    assert np.allclose(truth.click_probability(users, items, t, np.array([0, 1, 2])), a * truth.examination(np.arange(3)))
    prefs = truth.user_preferences(users, t)
    assert prefs.shape == (3, len(truth.category_names)) and np.allclose(prefs.sum(axis=1), 1, atol=1e-5)
    groups = truth.creator_groups()
    assert set(groups.values()) == {"new", "established"}
    live = truth.live_items(t)
    best = truth.oracle_order("u3", live, t)
    scores = truth.attractiveness(np.full(len(best), "u3"), best, t)
    assert sorted(best) == sorted(live) and np.all(np.diff(scores) <= 0)
    for bad in (["u0", "x1"], ["u0", f"u{MEDIUM.n_users}"], ["u-1"]):
        with pytest.raises(NotFound):
            truth.attractiveness(np.array(bad), np.array(["i0"] * len(bad)), t)
    with pytest.raises(NotFound):
        WorldTruth.load(world_dir / "truth" / "nowhere")


def test_config_is_checked() -> None:
    with pytest.raises(SchemaError):
        WorldConfig(n_users=0, policy_uniform=0.0)


# ---------------------------------------------------------------------------- chunking, CLI
def test_many_chunks_bounded_memory(tmp_path: Path) -> None:
    cfg = replace(SMALL, session_chunk=50, n_days=2)
    summary = generate_world(tmp_path / "w", cfg, progress=False)
    pf = pq.ParquetFile(tmp_path / "w" / "events.parquet")
    assert summary.n_chunks_written > 10
    assert pf.num_row_groups == summary.n_chunks_written
    assert max(pf.metadata.row_group(k).num_rows for k in range(pf.num_row_groups)) < 50 * cfg.feed_len * 2
    ev = load_dataset(tmp_path / "w").events_frame(["ts", "event_id"])
    assert np.all(np.diff(ev.ts.values) >= 0) and ev.event_id.is_unique


def _cli():
    from feedrank.cli.main import cli

    return cli


def test_cli_synth(tmp_path: Path) -> None:
    out = tmp_path / "cli-world"
    args = ["data", "synth", "--out", str(out), "--users", "300", "--items", "200", "--days", "2",
            "--seed", "4", "--start", "2026-02-01", "--feed-len", "5", "--categories", "14", "--no-progress"]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["n_events"] > 0 and summary["events_by_kind"]["impression"] > 0
    ds = load_dataset(out)
    assert ds.events_frame(["position"]).position.max() == 4
    truth = WorldTruth.load(out)
    assert len(truth.category_names) == 14 and truth.category_names[-1] == "topic14"
    assert truth.period[0] == pd.Timestamp("2026-02-01", tz="UTC").timestamp()
    res = CliRunner().invoke(_cli(), ["data", "validate", str(out)])
    assert res.exit_code == 0, res.output
