"""Gated retraining: warm start, the offline gate (accepts a good challenger, refuses a
broken one), the canary experiments file, and automatic rollback on a CTR drop."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from feedrank.bench.retrain import split_world
from feedrank.config import load_config
from feedrank.data.eventlog import EventLog
from feedrank.data.synth import WorldConfig, generate_world
from feedrank.evaluation.abreport import ab_report
from feedrank.evaluation.offline import evaluate_prepared
from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.build import train_model
from feedrank.pipeline.retrain import (
    EXPERIMENT,
    RetrainPolicy,
    check_online,
    gate,
    read_log,
    read_state,
    rollback_decision,
    run_cycle,
    write_state,
)
from feedrank.pipeline.warmstart import copy_ranker, copy_two_tower, warm_configs
from feedrank.ranking.model import build_ranker
from feedrank.ranking.train import train_ranker
from feedrank.registry.store import ModelRegistry
from feedrank.serving.experiments import parse_experiments
from feedrank.types import Event, EventKind

NOW = float(int(time.time() // 3600 * 3600))
TRAIN = ["retrieval.epochs=2", "ranking.epochs=3", "retrieval.id_buckets=4096", "retrieval.text_buckets=4096",
         "ranking.max_train_examples=15000",
         "ranking.distill_hidden=[]"]
quiet = lambda m: None  # noqa: E731


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> dict[str, Path]:
    """A world whose newest 7,000 events sit in a live event log; the champion (v1) was
    trained on the rest and is current in the registry."""
    root = tmp_path_factory.mktemp("retrain")
    generate_world(root / "world", WorldConfig(n_users=800, n_items=250, n_days=4, activity_mean=2.0, seed=3,
                                               start=NOW - 4 * 86400.0), progress=False)
    split_world(root / "world", root / "base", root / "registry" / "events", 7000)
    train_model(root / "base", root / "champion", load_config(None, TRAIN), show_progress=False,
                evaluator=evaluate_prepared, say=quiet)
    ModelRegistry(root / "registry").publish(root / "champion", promote=True)
    return {"root": root, "registry": root / "registry", "events": root / "registry" / "events", "base": root / "base"}


# ------------------------------------------------------------------ pure decisions
def test_gate_accepts_within_threshold_and_refuses_regressions():
    champ = {"ranking": {"auc": 0.78, "n_impressions": 5000}, "retrieval": {"recall@100": 0.60, "n_users": 500}}
    assert gate(champ, {"ranking": {"auc": 0.776}, "retrieval": {"recall@100": 0.61}}, 0.005).accept
    d = gate(champ, {"ranking": {"auc": 0.70}, "retrieval": {"recall@100": 0.61}}, 0.005)
    assert not d.accept and "ranking.auc" in d.reasons[0]
    d = gate(champ, {"ranking": {"auc": 0.79}, "retrieval": {"recall@100": 0.50}}, 0.005)
    assert not d.accept and "recall@100" in d.reasons[0]
    assert gate(champ, {"ranking": {"auc": 0.78}, "retrieval": {"recall@100": 0.59}}, 0.005, 0.02).accept
    assert not gate(champ, {"ranking": {"auc": 0.78}, "retrieval": {"recall@100": 0.57}}, 0.005, 0.02).accept
    assert not gate(champ, {"ranking": None, "retrieval": {"recall@100": 0.61}}, 0.005).accept  # lost its ranker
    assert not gate(champ, {"ranking": {"auc": float("nan")}, "retrieval": {"recall@100": 0.61}}, 0.005).accept
    assert gate({"ranking": None, "retrieval": None}, {"ranking": None, "retrieval": None}, 0.0).accept
    # too small a held-out slice: reported, not gated
    small = {"ranking": {"auc": 0.78, "n_impressions": 300}, "retrieval": {"recall@100": 0.60, "n_users": 20}}
    d = gate(small, {"ranking": {"auc": 0.70}, "retrieval": {"recall@100": 0.40}}, 0.005)
    assert d.accept and any("not gated" in r for r in d.reasons)
    assert not gate(small, {"ranking": {"auc": 0.70}}, 0.005, min_sample={}).accept


def test_rollback_decision_needs_impressions_and_a_margin():
    def rep(c_imp, c_clk, x_imp, x_clk):
        return {"arms": [{"arm": "e/control", "impressions": c_imp, "ctr": c_clk / c_imp},
                         {"arm": "e/challenger", "impressions": x_imp, "ctr": x_clk / x_imp}]}
    d = rollback_decision(rep(5000, 500, 100, 1), "e/control", "e/challenger", 0.01, 1000)
    assert not d.judged and not d.rollback
    d = rollback_decision(rep(5000, 500, 5000, 300), "e/control", "e/challenger", 0.01, 1000)
    assert d.judged and d.rollback and d.challenger_ctr == pytest.approx(0.06)
    d = rollback_decision(rep(5000, 500, 5000, 460), "e/control", "e/challenger", 0.05, 1000)
    assert d.judged and not d.rollback


# ------------------------------------------------------------------ warm start
def test_warm_start_copies_the_champions_weights(scenario):
    champ = load_artifacts(scenario["registry"] / "versions" / "000001")
    tt = copy_two_tower(champ.two_tower, champ.two_tower.content.numpy() if champ.two_tower.dims.content_dim else None)
    for k, v in champ.two_tower.state_dict().items():
        assert torch.equal(v, tt.state_dict()[k]), k
    rk = copy_ranker(champ.ranker)
    fresh = build_ranker(champ.ranker.n_categories, tuple(champ.cfg.ranking.hidden), n_features=champ.ranker.mean.shape[0])
    dense = np.random.default_rng(0).normal(size=(64, champ.ranker.mean.shape[0])).astype(np.float32)
    cat = np.zeros(64, dtype=np.int64)
    with torch.no_grad():
        same = rk(torch.from_numpy(dense), torch.from_numpy(cat))
        ref = champ.ranker(torch.from_numpy(dense), torch.from_numpy(cat))
        other = fresh(torch.from_numpy(dense), torch.from_numpy(cat))
    assert torch.allclose(same, ref) and not torch.allclose(other, ref)
    # fine-tuning (the recipe from init=) trains every parameter of a copy, never the champion
    before = {k: v.clone() for k, v in champ.ranker.state_dict().items()}
    y = (np.arange(64) % 7 == 0).astype(np.int64)
    _, tune = warm_configs(champ.cfg, 2)
    tuned, _ = train_ranker(tune, dense, cat, np.arange(64) % 10, y, champ.ranker.n_categories, np.random.default_rng(0),
                            show_progress=False, groups=np.arange(64) // 8, log_dwell=np.full(64, np.nan), init=champ.ranker)
    assert all(torch.equal(before[k], v) for k, v in champ.ranker.state_dict().items())
    moved = {k for k, v in tuned.state_dict().items() if not torch.equal(before[k], v)}
    assert {"position_bias.weight", "head_click.weight", "cat_emb.weight"} <= moved
    assert torch.equal(tuned.mean, champ.ranker.mean) and torch.equal(tuned.std, champ.ranker.std)


# ------------------------------------------------------------------ whole cycles
def test_cycle_gates_canaries_promotes_and_refuses_a_broken_challenger(scenario, tmp_path):
    reg = ModelRegistry(scenario["registry"])
    # a deliberately broken challenger (inverted click labels) is refused; v1 stays current
    res = run_cycle(scenario["registry"], scenario["events"], None, evaluate_prepared, ab_report,
                    RetrainPolicy(epochs=5), str(scenario["base"]), show_progress=False, say=quiet,
                    label_noise=lambda y, rng: 1 - y)
    assert res.action == "rejected", res
    assert "ranking.auc" in res.detail and reg.current() == 1 and reg.versions() == [1]

    # a good one passes the gate and gets a canary share
    exp_file = tmp_path / "experiments.yaml"
    policy = RetrainPolicy(canary=0.5, experiments_file=str(exp_file), min_impressions=50)
    res = run_cycle(scenario["registry"], scenario["events"], None, evaluate_prepared, ab_report, policy,
                    str(scenario["base"]), show_progress=False, say=quiet)
    assert res.action == "canary", res
    assert res.gate["accept"] and res.gate["challenger"]["ranking.auc"] > 0.6
    assert reg.current() == 1 and res.version == 2          # registered, not yet promoted
    exps = parse_experiments(yaml.safe_load(exp_file.read_text()))
    assert [(a.name, a.model_version) for a in exps[0].arms] == [("control", 1), ("challenger", 2)]
    # the challenger really started from the champion: closer to it than a fresh model is
    champ, chall = load_artifacts(reg.path(1)), load_artifacts(reg.path(2))
    fresh = build_ranker(champ.ranker.n_categories, tuple(champ.cfg.ranking.hidden), n_features=champ.ranker.mean.shape[0])
    w = {k: v for k, v in champ.ranker.state_dict().items() if v.dtype.is_floating_point and v.ndim == 2}
    d_warm = sum(float((chall.ranker.state_dict()[k] - v).norm()) for k, v in w.items())
    d_fresh = sum(float((fresh.state_dict()[k] - v).norm()) for k, v in w.items())
    assert d_warm < 0.5 * d_fresh
    assert chall.info["retrain"]["gate"]["accept"] and chall.info["warm_start"]["from"] == champ.version
    # the retrieval prior serves on: the champion's held-out weights carry over (a bundle
    # without them would retrieve by the towers alone)
    assert champ.info["age_prior"] and chall.info["age_prior"] == champ.info["age_prior"]
    assert chall.info["age_prior_fit"]["fit"] == "carried_over" and chall.info["age_prior_fit"]["from"] == champ.version

    # the canary's arms get traffic: the challenger does as well as control -> promoted
    since = read_state(reg)["since"]
    _plant_canary(scenario["events"], ctr_control=0.10, ctr_challenger=0.10, seed=1, t0=since - 500)  # an earlier canary's
    assert check_online(reg, scenario["events"], policy, ab_report, say=quiet)["action"] == "waiting"
    _plant_canary(scenario["events"], ctr_control=0.10, ctr_challenger=0.10, seed=2, t0=since + 1)
    out = check_online(reg, scenario["events"], policy, ab_report, say=quiet)
    assert out["action"] == "promoted_after_canary" and reg.current() == 2
    assert yaml.safe_load(exp_file.read_text()) == {"experiments": []}
    assert read_state(reg)["phase"] == "monitor"
    write_state(reg, {"phase": "idle"})

    assert [e["action"] for e in read_log(reg) if e["event"] == "gate"] == ["rejected", "canary"]


def test_rollback_fires_on_a_planted_ctr_drop(scenario, tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.publish(reg_path := scenario["registry"] / "versions" / "000001", promote=True)
    reg.publish(reg_path, promote=True)
    events = tmp_path / "events"
    t_promote = NOW - 600.0
    write_state(reg, {"phase": "monitor", "champion": 1, "challenger": 2, "since": t_promote})
    _plant(events, "x", t_promote - 300, 3000, 0.10, seed=2)      # before the promotion
    _plant(events, "y", t_promote + 1, 3000, 0.03, seed=3)        # after: CTR fell by 7 points
    out = check_online(reg, events, RetrainPolicy(rollback_margin=0.02, min_impressions=1000), ab_report,
                       say=quiet, now=t_promote + 300)
    assert out["action"] == "rolled_back" and out["rollback"]
    assert reg.current() == 1 and reg.history()[-1]["action"] == "rollback"
    assert read_state(reg) == {"phase": "idle", "rejected": 2}
    # the same drop within the margin is kept
    reg.promote(2)
    write_state(reg, {"phase": "monitor", "champion": 1, "challenger": 2, "since": t_promote})
    out = check_online(reg, events, RetrainPolicy(rollback_margin=0.10, min_impressions=1000), ab_report,
                       say=quiet, now=t_promote + 300)
    assert out["action"] == "kept" and reg.current() == 2


def test_canary_with_a_worse_challenger_is_withdrawn(scenario, tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    v = scenario["registry"] / "versions" / "000001"
    reg.publish(v, promote=True)
    reg.publish(v)
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text("experiments: []\n")
    write_state(reg, {"phase": "canary", "champion": 1, "challenger": 2, "since": NOW})
    _plant_canary(tmp_path / "events", ctr_control=0.12, ctr_challenger=0.04, seed=4, t0=NOW + 1)
    out = check_online(reg, tmp_path / "events", RetrainPolicy(experiments_file=str(exp_file), min_impressions=500),
                       ab_report, say=quiet)
    assert out["action"] == "canary_rolled_back" and reg.current() == 1
    assert read_state(reg)["rejected"] == 2


# ------------------------------------------------------------------ helpers
def _plant(events_dir: Path, tag: str, t0: float, n_requests_x10: int, ctr: float, seed: int, arm: str | None = None) -> None:
    """``n_requests_x10`` impressions in feeds of 10 from t0 on (one request a second), with
    clicks at rate ``ctr``."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n_requests_x10 // 10):
        rid = f"{tag}{r}"
        for p in range(10):
            ts = t0 + r
            out.append(Event(f"{rid}:{p}", ts, f"u{r % 97}", f"i{p}", EventKind.IMPRESSION, p, rid, 1.0, None, arm))
            if rng.random() < ctr:
                out.append(Event(f"{rid}:{p}:c", ts + 0.5, f"u{r % 97}", f"i{p}", EventKind.CLICK, p, rid))
    log = EventLog(events_dir)
    try:
        log.append(out)
    finally:
        log.close()


def _plant_canary(events_dir: Path, ctr_control: float, ctr_challenger: float, seed: int, t0: float) -> None:
    _plant(events_dir, f"c{seed}-", t0, 1500, ctr_control, seed, f"{EXPERIMENT}/control")
    _plant(events_dir, f"x{seed}-", t0, 1500, ctr_challenger, seed + 100, f"{EXPERIMENT}/challenger")


def test_cli_schedule_parsing_and_help():
    import click
    from click.testing import CliRunner

    from feedrank.cli.main import cli
    from feedrank.cli.retrain import parse_every

    assert parse_every("90s") == 90 and parse_every("10m") == 600 and parse_every("1h") == 3600 and parse_every("5") == 5
    with pytest.raises(click.BadParameter):
        parse_every("soon")
    for cmd in (["retrain", "--help"], ["simulate", "--help"], ["bench", "retrain", "--help"]):
        out = CliRunner().invoke(cli, cmd)
        assert out.exit_code == 0 and "Examples:" in out.output, out.output
