"""``benchmarks/reindex_bundle.py``: a copy of a bundle with the index rebuilt, loadable,
every other file unchanged, a new version; the source bundle untouched."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from feedrank.pipeline.artifacts import load_artifacts

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "reindex_bundle.py"


def test_reindex_writes_a_loadable_bundle_with_the_new_kind(model_dir: Path, tmp_path: Path):
    spec = importlib.util.spec_from_file_location("reindex_bundle", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    before = json.loads((model_dir / "manifest.json").read_text())
    got = mod.reindex(model_dir, tmp_path / "hnsw", kind="hnsw")
    assert got["from"] == before["index_kind"] and got["to"] == "hnsw" and 0.9 <= got["index_recall_at_100"] <= 1.0
    art = load_artifacts(tmp_path / "hnsw")  # verifies every hash
    assert art.index.kind == "hnsw" and len(art.index) == len(art.catalog) and art.version != before["version"]
    after = json.loads((tmp_path / "hnsw" / "manifest.json").read_text())
    assert {k: v for k, v in after["files"].items() if k != "index.faiss"} == \
        {k: v for k, v in before["files"].items() if k != "index.faiss"}
    assert after["age_prior"] == before["age_prior"] and after["index_kind"] == "hnsw"
    assert json.loads((model_dir / "manifest.json").read_text()) == before
