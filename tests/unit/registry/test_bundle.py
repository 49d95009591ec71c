"""Model bundles: written atomically, self-describing, verified on open."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from feedrank.errors import FeedrankError, ModelLoadError, NotFound
from feedrank.registry import bundle as bundle_mod
from feedrank.registry.bundle import BUNDLE_FORMAT, MANIFEST, BundleManifest, begin_bundle, finalize_bundle, open_bundle, sha256_file

FILES = {"weights.pt": b"\x00\x01weights" * 100, "vocab.json": b'{"a": 1}', "notes.txt": b"hello"}


def _write(out: Path, files: dict[str, bytes] = FILES, body: dict | None = None) -> BundleManifest:
    staging = begin_bundle(out)
    for name, data in files.items():
        (staging / name).write_bytes(data)
    return finalize_bundle(staging, out, body if body is not None else {"metrics": {"auc": 0.7}})


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


def test_begin_bundle_makes_empty_staging_beside_out(tmp_path: Path):
    out = tmp_path / "models" / "m1"
    out.parent.mkdir()
    staging = begin_bundle(out)
    assert staging.is_dir() and staging.parent == out.parent and not any(staging.iterdir())
    (staging / "junk").write_text("x")
    again = begin_bundle(out)  # a second writer gets its own staging folder: no clobbering
    assert again != staging and again.parent == out.parent and not any(again.iterdir())
    assert (staging / "junk").exists()
    assert not out.exists()


def test_finalize_writes_manifest_with_hashes_and_version(tmp_path: Path):
    out = tmp_path / "m"
    m = _write(out)
    assert m.root == out and out.is_dir()
    raw = _manifest(out)
    assert raw["format"] == BUNDLE_FORMAT
    assert raw["files"] == {n: hashlib.sha256(d).hexdigest() for n, d in FILES.items()}
    assert MANIFEST not in raw["files"]
    assert m.files == raw["files"]
    combined = hashlib.sha256("".join(f"{k}:{v}" for k, v in sorted(raw["files"].items())).encode()).hexdigest()
    assert raw["content_hash"] == combined
    assert re.fullmatch(r"v\d{10,}-[0-9a-f]{8}", m.version), m.version
    assert m.version.endswith(combined[:8])
    assert abs(int(m.version[1:].split("-")[0]) - m.created_at) <= 1
    assert m.body["metrics"] == {"auc": 0.7}
    # no staging folder is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    # opened again from disk: the same thing
    again = open_bundle(out)
    assert again.version == m.version and again.files == m.files and again.body == m.body
    assert again.path("weights.pt") == out / "weights.pt" and again.has("notes.txt") and not again.has("x")


def test_same_content_same_hash_part_and_explicit_version(tmp_path: Path):
    a, b = _write(tmp_path / "a"), _write(tmp_path / "b")
    assert a.version.split("-")[1] == b.version.split("-")[1]
    c = _write(tmp_path / "c", {**FILES, "notes.txt": b"other"})
    assert c.version.split("-")[1] != a.version.split("-")[1]
    named = _write(tmp_path / "d", body={"version": "release-7"})
    assert named.version == "release-7" and open_bundle(tmp_path / "d").version == "release-7"


def test_path_of_unknown_file_is_not_found(tmp_path: Path):
    m = _write(tmp_path / "m")
    with pytest.raises(NotFound, match="nope.bin"):
        m.path("nope.bin")


def test_finalize_replaces_an_existing_bundle_whole(tmp_path: Path):
    out = tmp_path / "m"
    old = _write(out, {"old_only.bin": b"old", "weights.pt": b"old weights"})
    new = _write(out, {"weights.pt": b"new weights", "vocab.json": b"{}"})
    assert new.version != old.version or new.files != old.files
    assert sorted(p.name for p in out.iterdir()) == sorted(["weights.pt", "vocab.json", MANIFEST])
    assert (out / "weights.pt").read_bytes() == b"new weights"
    assert open_bundle(out).files == new.files
    # neither the staging nor the moved-aside old bundle is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_open_missing_bundle_is_not_found(tmp_path: Path):
    with pytest.raises(NotFound, match="manifest.json"):
        open_bundle(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match=str(tmp_path / "empty")):
        open_bundle(tmp_path / "empty")


def test_missing_file_fails_verification_naming_it(tmp_path: Path):
    out = tmp_path / "m"
    _write(out)
    (out / "vocab.json").unlink()
    with pytest.raises(ModelLoadError, match=r"vocab\.json: missing"):
        open_bundle(out)


def test_one_changed_byte_fails_verification_naming_the_file(tmp_path: Path):
    out = tmp_path / "m"
    _write(out)
    data = bytearray((out / "weights.pt").read_bytes())
    data[17] ^= 0x01
    (out / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as ei:
        open_bundle(out)
    msg = str(ei.value)
    assert "weights.pt" in msg and "sha256" in msg
    assert "vocab.json" not in msg and "notes.txt" not in msg  # only the bad one is named


def test_verify_false_skips_hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "m"
    m = _write(out)
    (out / "weights.pt").write_bytes(b"tampered")

    def no_hashing(*a, **k):
        raise AssertionError("verify=False must not hash files")

    monkeypatch.setattr(bundle_mod, "sha256_file", no_hashing)
    opened = open_bundle(out, verify=False)
    assert opened.version == m.version and opened.files == m.files


def test_bad_json_manifest_is_model_load_error_naming_it(tmp_path: Path):
    out = tmp_path / "m"
    _write(out)
    (out / MANIFEST).write_text('{"format": 1, "version": ')
    with pytest.raises(ModelLoadError, match=re.escape(str(out / MANIFEST))):
        open_bundle(out)
    (out / MANIFEST).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelLoadError, match="manifest.json"):
        open_bundle(out)


@pytest.mark.parametrize("fmt", [None, 0, 2, "1"])
def test_wrong_format_is_model_load_error(tmp_path: Path, fmt):
    out = tmp_path / "m"
    _write(out)
    raw = _manifest(out)
    if fmt is None:
        del raw["format"]
    else:
        raw["format"] = fmt
    (out / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="format"):
        open_bundle(out)


@pytest.mark.parametrize("breakage", ["no_version", "no_created_at", "not_an_object"])
def test_malformed_manifest_is_model_load_error(tmp_path: Path, breakage: str):
    out = tmp_path / "m"
    _write(out)
    raw = _manifest(out)
    if breakage == "no_version":
        del raw["version"]
    elif breakage == "no_created_at":
        del raw["created_at"]
    else:
        raw = [raw]
    (out / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="manifest.json"):
        open_bundle(out)


def test_errors_are_feedrank_errors(tmp_path: Path):
    # serving maps FeedrankError subclasses; a corrupt bundle must never escape as OSError
    out = tmp_path / "m"
    _write(out)
    (out / "notes.txt").write_text("changed")
    with pytest.raises(FeedrankError):
        open_bundle(out)


def test_sha256_file_streams_in_chunks(tmp_path: Path):
    p = tmp_path / "big"
    data = bytes(range(256)) * 5000
    p.write_bytes(data)
    assert sha256_file(p, chunk=1000) == hashlib.sha256(data).hexdigest()
