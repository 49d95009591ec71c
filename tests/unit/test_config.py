from pathlib import Path

import pytest

from feedrank.config import FeedrankConfig, config_from_dict, config_to_dict, load_config
from feedrank.errors import ConfigError


def test_defaults_round_trip():
    cfg = FeedrankConfig()
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_yaml_and_dotted_overrides(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("ranking:\n  epochs: 5\n  hidden: [16, 8]\nretrieval:\n  index: hnsw\n")
    cfg = load_config(f, ["ranking.epochs=3", "pipeline.deadline_ms=80"])
    assert cfg.ranking.epochs == 3
    assert cfg.ranking.hidden == (16, 8)
    assert cfg.retrieval.index == "hnsw"
    assert cfg.pipeline.deadline_ms == 80.0


def test_every_problem_listed_at_once():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"ranking": {"epochs": "x", "nope": 1}, "bogus": {}, "retrieval": {"lr": -1.0, "index": "kd"}})
    problems = exc.value.problems
    assert any(p.startswith("ranking.epochs: expected int") for p in problems)
    assert any(p.startswith("ranking.nope: unknown key") for p in problems)
    assert any(p.startswith("bogus: unknown key") for p in problems)
    assert any(p.startswith("retrieval.lr: must be >=") for p in problems)
    assert any(p.startswith("retrieval.index: must be one of") for p in problems)
    assert len(problems) == 5


def test_bad_override_syntax_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["ranking.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="expected int"):
        config_from_dict({"ranking": {"epochs": True}})


def test_shipped_default_yaml_equals_builtin_defaults():
    repo = Path(__file__).resolve().parents[2]
    assert load_config(repo / "configs" / "default.yaml") == FeedrankConfig()
