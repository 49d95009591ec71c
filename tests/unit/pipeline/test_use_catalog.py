"""`ModelArtifacts.use_catalog`: serving or evaluating a trained model on another catalogue
re-encodes that catalogue's items with its own title content vectors, row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feedrank.features.catalog import ItemCatalog
from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.build import item_content
from feedrank.retrieval.encode import encode_items


def test_use_catalog_refreshes_content_rows_in_the_new_order(model_dir: Path) -> None:
    reference = load_artifacts(model_dir)
    assert reference.two_tower.dims.content_dim, "the fixture model must take title content vectors"
    art = load_artifacts(model_dir)  # its own copy: use_catalog mutates the towers' content table
    items = art.items.iloc[::-1].reset_index(drop=True)  # the same items, reversed, and two of them dropped
    items = items.iloc[2:].reset_index(drop=True)
    cfg = art.cfg.retrieval
    catalog = ItemCatalog.build(items, art.vocabs, cfg.id_buckets, cfg.text_buckets)

    art.use_catalog(catalog, say=lambda m: None)

    expected, _ = item_content(art.cfg, catalog, say=lambda m: None)
    assert art.two_tower.content.shape[0] == len(catalog)
    np.testing.assert_allclose(art.two_tower.content.numpy(), expected, rtol=0, atol=0)
    # each item's vector is what the trained model gives that item in its own catalogue
    old_rows = np.array([reference.catalog.index[i] for i in catalog.item_ids])
    np.testing.assert_allclose(art.item_vectors, reference.item_vectors[old_rows], atol=1e-5)
    np.testing.assert_allclose(art.item_vectors, encode_items(art.two_tower, catalog), atol=0)
    assert len(art.index) == len(catalog)
