"""What the two-tower recipe trains on, loaded for one world the way the training pipeline
does it: shared by the training-speed probes (``bench/scale.py``'s ``train`` probe and
``bench/step_profile.py``), so both measure the same inputs.

    inputs = load_train_inputs("var/world", ["training.threads=1"])
    train_two_tower(inputs.cfg.retrieval, inputs.catalog, inputs.clicks, inputs.n_category,
                    inputs.n_subcategory, inputs.rng, content=inputs.content)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from feedrank.config import FeedrankConfig
    from feedrank.features.catalog import ItemCatalog
    from feedrank.features.history import ClickLog


@dataclass(frozen=True)
class TrainInputs:
    """A world's train-split clicks with what the two-tower needs beside them."""

    cfg: FeedrankConfig
    catalog: ItemCatalog
    clicks: ClickLog  # the clicks of the train side of the time split
    content: np.ndarray | None  # item content vectors, None when the config has none
    n_category: int
    n_subcategory: int
    rng: np.random.Generator  # seeded with 0


def load_train_inputs(data: str | Path, overrides: list[str]) -> TrainInputs:
    """Load ``data`` with the default config plus ``overrides``, one torch thread, every
    generator seeded with 0, quietly; keep the clicks of the train side of the split."""
    from feedrank.config import load_config
    from feedrank.pipeline.build import item_content, prepare
    from feedrank.training.common import seed_everything, setup_threads

    cfg = load_config(None, ["training.threads=1", *overrides])
    setup_threads(1)
    rng = seed_everything(0)
    quiet = lambda _m: None  # noqa: E731
    prep = prepare(data, cfg, say=quiet)
    mask = np.zeros(len(prep.events), dtype=bool)
    mask[prep.split.train_idx] = True
    clicks = prep.events.click_log(np.flatnonzero(mask))
    content, _ = item_content(cfg, prep.catalog, quiet)
    return TrainInputs(cfg, prep.catalog, clicks, content, len(prep.vocabs["category"]),
                       len(prep.vocabs["subcategory"]), rng)
