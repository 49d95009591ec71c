"""Seeding, thread setup and progress bars shared by the recipes."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch
from tqdm.auto import tqdm


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def setup_threads(threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def progress(iterable=None, total: int | None = None, desc: str = "", enabled: bool = True, unit: str = "it"):
    """A tqdm bar on stderr (disabled when ``enabled`` is False)."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
