from pathlib import Path

import pytest

from feedrank.errors import CorruptFile, ModelLoadError, NotFound
from feedrank.registry.bundle import begin_bundle, finalize_bundle
from feedrank.registry.store import ModelRegistry


def _bundle(tmp: Path, name: str, payload: str) -> Path:
    out = tmp / name
    staging = begin_bundle(out)
    (staging / "weights.bin").write_text(payload)
    finalize_bundle(staging, out, {"metrics": {"ranking": {"auc": 0.7}}})
    return out


def test_publish_numbers_versions_and_promote_moves_current(tmp_path: Path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.current() is None and reg.versions() == []
    v1 = reg.publish(_bundle(tmp_path, "a", "1"), promote=True)
    v2 = reg.publish(_bundle(tmp_path, "b", "2"))
    assert (v1, v2) == (1, 2)
    assert reg.current() == 1
    reg.promote(2)
    assert reg.current() == 2
    infos = reg.list()
    assert [i.current for i in infos] == [False, True]
    assert infos[0].metrics == {"ranking": {"auc": 0.7}}
    assert (reg.path(2) / "weights.bin").read_text() == "2"


def test_rollback_is_a_stack(tmp_path: Path):
    reg = ModelRegistry(tmp_path / "reg")
    for i in range(3):
        reg.publish(_bundle(tmp_path, f"m{i}", str(i)), promote=True)
    assert reg.current() == 3
    assert reg.rollback() == 2
    assert reg.rollback() == 1
    with pytest.raises(NotFound, match="nothing to roll back"):
        reg.rollback()
    reg.promote(3)
    assert reg.rollback() == 1
    actions = [h["action"] for h in reg.history()]
    assert actions.count("promote") == 4 and actions.count("rollback") == 3


def test_corrupt_bundles_are_refused(tmp_path: Path):
    reg = ModelRegistry(tmp_path / "reg")
    bad = _bundle(tmp_path, "bad", "x")
    (bad / "weights.bin").write_text("tampered")
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        reg.publish(bad)
    assert reg.versions() == []
    v = reg.publish(_bundle(tmp_path, "ok", "y"))
    (reg.path(v) / "weights.bin").write_text("rotted on disk")
    with pytest.raises(ModelLoadError):
        reg.promote(v)
    assert reg.current() is None


def test_unknown_version_and_torn_pointer(tmp_path: Path):
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(NotFound, match="model version 7 not in registry"):
        reg.promote(7)
    (tmp_path / "reg" / "current").write_text("garbage")
    with pytest.raises(CorruptFile, match="expected a version number"):
        reg.current()
    with pytest.raises(NotFound, match="not a model registry"):
        ModelRegistry(tmp_path / "nope", create=False)
