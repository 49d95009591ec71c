"""Everything a trained model consists of, and how it goes in and out of a bundle.

Files in a bundle:
    config.json        the FeedrankConfig used for training
    vocabs.json        category / subcategory vocabularies
    items.parquet      the catalogue the vectors are aligned with
    two_tower.pt       state_dict (loaded with weights_only=True)
    ranker.pt          state_dict, absent when the data had no impressions
    ranker_small.pt    the distilled ranker's state_dict (absent when not trained)
    ranker_state.npz   the ranker's engagement counters at the end of the data (ranking/stats.py)
    item_vectors.npy   (N, D) float32
    item_content.npy   (N, Dc) float32 title content vectors (absent when the model has none)
    index.faiss        FAISS index over item_vectors (ids = catalogue rows)
    state.npz          online state at the end of the data: user ids, histories (U, L),
                       clicks per user, item impression and click counters
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from feedrank.config import FeedrankConfig, config_from_dict, config_to_dict
from feedrank.data.dataset import seconds_to_ts, ts_to_seconds
from feedrank.errors import ModelLoadError
from feedrank.features.catalog import ItemCatalog
from feedrank.features.vocab import Vocab, load_vocabs, save_vocabs
from feedrank.ranking.calibration import Calibrator
from feedrank.ranking.model import Ranker, ranker_from_description
from feedrank.ranking.stats import EngagementState
from feedrank.registry.bundle import BundleManifest, begin_bundle, finalize_bundle, open_bundle
from feedrank.retrieval.index import FaissIndex, IndexParams
from feedrank.retrieval.two_tower import TwoTower, TwoTowerDims


@dataclass
class OnlineSnapshot:
    user_ids: np.ndarray          # (U,) str
    histories: np.ndarray         # (U, L) int64, -1 padded
    user_clicks: np.ndarray       # (U,) int64
    item_impressions: np.ndarray  # (N,) float64
    item_clicks: np.ndarray       # (N,) float64


@dataclass
class ModelArtifacts:
    cfg: FeedrankConfig
    vocabs: dict[str, Vocab]
    items: pd.DataFrame
    catalog: ItemCatalog
    two_tower: TwoTower
    item_vectors: np.ndarray
    index: FaissIndex
    ranker: Ranker | None
    snapshot: OnlineSnapshot
    info: dict[str, Any] = field(default_factory=dict)   # prior_ctr, split, metrics, reports
    manifest: BundleManifest | None = None
    ranker_small: Ranker | None = None        # distilled ranker
    calibrator: Calibrator = field(default_factory=Calibrator)   # ranker logit -> p(click)
    engagement: EngagementState | None = None  # the ranker's engagement counters

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else "unsaved"

    def use_catalog(self, catalog: ItemCatalog, say: Callable[[str], None] = print) -> None:
        """Serve another catalogue with the trained towers (evaluation on other data, a
        retrain's candidate): the title content vectors of its items (when the towers take
        them; cached on disk by content hash), then its item vectors and the index as the
        config picks it. The content rows must follow the new catalogue's order: the item
        tower reads them by catalogue index."""
        from feedrank.features.content import title_content
        from feedrank.retrieval.encode import encode_items
        from feedrank.retrieval.index import build_index

        if self.two_tower.dims.content_dim:
            content, _ = title_content(self.cfg.retrieval.content_encoder, self.cfg.retrieval.content_cache_dir,
                                       catalog.titles, say)
            self.two_tower.set_content(content)
        self.catalog = catalog
        self.item_vectors = encode_items(self.two_tower, catalog)
        self.index = build_index(self.item_vectors, self.cfg.retrieval.index, seed=self.cfg.training.seed,
                                 params=IndexParams.from_config(self.cfg.retrieval))


def save_artifacts(art: ModelArtifacts, out: Path) -> BundleManifest:
    staging = begin_bundle(Path(out))
    (staging / "config.json").write_text(json.dumps(config_to_dict(art.cfg), indent=2))
    save_vocabs(staging / "vocabs.json", art.vocabs)
    keep = ["item_id", "title", "category", "subcategory", "creator"] + [c for c in ("creator_group",) if c in art.items.columns]
    items = art.items[keep].copy()
    tbl = pa.Table.from_pandas(items, preserve_index=False).append_column("published_at", seconds_to_ts(art.items["published_at"].to_numpy(dtype=np.float64)))
    pq.write_table(tbl, staging / "items.parquet")
    torch.save(art.two_tower.state_dict(), staging / "two_tower.pt")
    if art.ranker is not None:
        torch.save(art.ranker.state_dict(), staging / "ranker.pt")
    if art.ranker_small is not None:
        torch.save(art.ranker_small.state_dict(), staging / "ranker_small.pt")
    if art.engagement is not None:
        art.engagement.save(staging / "ranker_state.npz")
    np.save(staging / "item_vectors.npy", art.item_vectors.astype(np.float32), allow_pickle=False)
    if art.two_tower.dims.content_dim:
        np.save(staging / "item_content.npy", art.two_tower.content.numpy().astype(np.float32), allow_pickle=False)
    art.index.save(staging / "index.faiss")
    s = art.snapshot
    np.savez(staging / "state.npz", user_ids=s.user_ids.astype(str), histories=s.histories, user_clicks=s.user_clicks,
             item_impressions=s.item_impressions, item_clicks=s.item_clicks)
    body = {
        "dims": art.two_tower.dims.__dict__,
        "index_kind": art.index.kind,
        "ranker": None if art.ranker is None else art.ranker.describe(),
        "ranker_small": None if art.ranker_small is None else art.ranker_small.describe(),
        "calibration": art.calibrator.to_dict(),
        **art.info,
    }
    manifest = finalize_bundle(staging, Path(out), body)
    art.manifest = manifest
    return manifest


def load_artifacts(model_dir: str | Path, verify: bool = True) -> ModelArtifacts:
    """Load and check a bundle; any inconsistency raises ModelLoadError."""
    manifest = open_bundle(model_dir, verify=verify)
    try:
        cfg = config_from_dict(json.loads(manifest.path("config.json").read_text()))
        vocabs = load_vocabs(manifest.path("vocabs.json"))
        tbl = pq.read_table(manifest.path("items.parquet"))
        items = tbl.drop(["published_at"]).to_pandas()
        items["published_at"] = ts_to_seconds(tbl.column("published_at"))
        catalog = ItemCatalog.build(items, vocabs, cfg.retrieval.id_buckets, cfg.retrieval.text_buckets)
        dims = TwoTowerDims(**manifest.body["dims"])
        tt = TwoTower(dims)
        tt.load_state_dict(torch.load(manifest.path("two_tower.pt"), weights_only=True))
        tt.eval()
        if dims.content_dim:
            tt.set_content(np.load(manifest.path("item_content.npy"), allow_pickle=False))
        ranker = None
        rinfo = manifest.body.get("ranker")
        if rinfo:
            ranker = ranker_from_description(rinfo)
            ranker.load_state_dict(torch.load(manifest.path("ranker.pt"), weights_only=True))
            ranker.eval()
        ranker_small = None
        if manifest.body.get("ranker_small"):
            ranker_small = ranker_from_description(manifest.body["ranker_small"])
            ranker_small.load_state_dict(torch.load(manifest.path("ranker_small.pt"), weights_only=True))
            ranker_small.eval()
        calibrator = Calibrator.from_dict(manifest.body.get("calibration"))
        engagement = None
        if rinfo and manifest.has("ranker_state.npz"):
            engagement = EngagementState.load(manifest.path("ranker_state.npz"), len(vocabs["category"]))
        vectors = np.load(manifest.path("item_vectors.npy"), allow_pickle=False)
        index = FaissIndex.load(manifest.path("index.faiss"), manifest.body.get("index_kind", "flat"),
                                IndexParams.from_config(cfg.retrieval))
        with np.load(manifest.path("state.npz"), allow_pickle=False) as z:
            snap = OnlineSnapshot(z["user_ids"], z["histories"], z["user_clicks"], z["item_impressions"], z["item_clicks"])
    except (KeyError, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"bundle {manifest.root} could not be loaded: {exc}") from exc
    n = len(catalog)
    problems = []
    if vectors.shape != (n, dims.out_dim):
        problems.append(f"item_vectors.npy shape {vectors.shape} != ({n}, {dims.out_dim})")
    if len(index) != n:
        problems.append(f"index.faiss holds {len(index)} vectors, catalogue has {n}")
    if dims.content_dim and len(tt.content) != n:
        problems.append(f"item_content.npy has {len(tt.content)} rows, catalogue has {n}")
    if len(snap.item_clicks) != n:
        problems.append(f"state.npz counters cover {len(snap.item_clicks)} items, catalogue has {n}")
    if problems:
        raise ModelLoadError(f"bundle {manifest.root} is inconsistent: " + "; ".join(problems))
    info = {k: v for k, v in manifest.body.items()
            if k not in ("dims", "index_kind", "ranker", "ranker_small", "calibration", "content_hash")}
    return ModelArtifacts(cfg, vocabs, items, catalog, tt, vectors, index, ranker, snap, info, manifest,
                          ranker_small=ranker_small, calibrator=calibrator, engagement=engagement)
