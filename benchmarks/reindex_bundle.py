"""Write a copy of a model bundle with its ANN index rebuilt as ``retrieval.index`` (auto:
by catalogue size, ``retrieval/index.py``) picks it now, e.g. after the index choice for a
corpus size changed. Every other file is hard-linked (or copied) unchanged but
``config.json``, written again by this release (so a release that predates the index kind
refuses the bundle at load instead of serving it wrongly); the manifest
gets the new ``index_kind`` and the index's own recall@100 vs exact (``check_recall``,
below ``retrieval.recall_floor`` nothing is written) and a new version.

    .venv/bin/python benchmarks/reindex_bundle.py var/bench/serve/u1000000-i1000000-d5/model --out /tmp/model-ivf
    .venv/bin/python benchmarks/reindex_bundle.py MODEL --out MODEL        # in place (atomic swap)
    .venv/bin/python benchmarks/reindex_bundle.py MODEL --out OUT --kind hnsw
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np

from feedrank.registry.bundle import MANIFEST, begin_bundle, finalize_bundle, open_bundle
from feedrank.retrieval.index import KINDS, IndexParams, build_index, check_recall


def reindex(model: Path, out: Path, kind: str = "auto", seed: int = 0) -> dict:
    """Rebuild ``model``'s index into a new bundle at ``out``; returns what changed."""
    import json

    from feedrank.config import config_from_dict, config_to_dict

    manifest = open_bundle(model)  # verifies every file's hash
    cfg = config_from_dict(json.loads(manifest.path("config.json").read_text()))
    vectors = np.load(manifest.path("item_vectors.npy"), allow_pickle=False)
    t0 = time.perf_counter()
    index = build_index(vectors, kind if kind != "auto" else cfg.retrieval.index, seed=seed,
                        params=IndexParams.from_config(cfg.retrieval))
    build_s = time.perf_counter() - t0
    recall = check_recall(index, vectors, cfg.retrieval.recall_floor, np.random.default_rng(seed))
    staging = begin_bundle(out)
    try:
        for name in manifest.files:
            if name in ("index.faiss", "config.json"):
                continue
            try:
                os.link(manifest.path(name), staging / name)
            except OSError:
                shutil.copy2(manifest.path(name), staging / name)
        index.save(staging / "index.faiss")
        # the config is written out again by this release, with every key it has (e.g.
        # retrieval.ivf_sq_nprobe): an older release then refuses the bundle at load
        # ("unknown config key") instead of serving an index kind it does not know
        (staging / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
        skip = {"format", "version", "created_at", "files", "content_hash"}
        body = {k: v for k, v in manifest.body.items() if k not in skip and k != MANIFEST}
        before = body.get("index_kind")
        body.update(index_kind=index.kind, index_recall_at_100=recall)
        new = finalize_bundle(staging, out, body)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"from": before, "to": index.kind, "items": len(index), "build_s": round(build_s, 1),
            "index_recall_at_100": recall, "version": new.version, "out": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="the new bundle's folder (may be MODEL itself)")
    ap.add_argument("--kind", default="auto", choices=["auto", *KINDS])
    args = ap.parse_args()
    print(reindex(args.model, args.out, args.kind))


if __name__ == "__main__":
    main()
