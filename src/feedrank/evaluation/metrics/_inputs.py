"""Input validation shared by the metric modules: every metric names the field that is wrong
(``SchemaError``) and converts its inputs once (float64 labels/scores, int64 group codes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from feedrank.errors import SchemaError


def _labels(labels: Any, name: str = "labels") -> np.ndarray:
    """(N,) binary labels -> (N,) float64 of 0.0/1.0."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise SchemaError(f"{name}: expected a 1-D array, got shape {y.shape}")
    if y.size == 0:
        raise SchemaError(f"{name}: empty input (need at least one row)")
    if y.dtype == bool:
        return y.astype(np.float64)
    if y.dtype.kind not in "iuf":
        raise SchemaError(f"{name}: expected bool or numeric 0/1 labels, got dtype {y.dtype}")
    y = y.astype(np.float64, copy=False)
    bad = ~((y == 0.0) | (y == 1.0))
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise SchemaError(f"{name}: labels must be 0 or 1; {int(bad.sum())} row(s) are not, first at rows {rows}")
    return y


def _scores(scores: Any, n: int, name: str = "scores") -> np.ndarray:
    """(N,) scores -> (N,) float64; NaN is an error, +-inf is allowed (it ranks)."""
    s = np.asarray(scores)
    if s.ndim != 1:
        raise SchemaError(f"{name}: expected a 1-D array, got shape {s.shape}")
    if s.dtype.kind not in "iufb":
        raise SchemaError(f"{name}: expected numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if len(s) != n:
        raise SchemaError(f"{name}: length {len(s)} does not match labels length {n}")
    nan = np.isnan(s)
    if nan.any():
        rows = np.flatnonzero(nan)[:5].tolist()
        raise SchemaError(f"{name}: {int(nan.sum())} NaN score(s), first at rows {rows}")
    return s


def _groups(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """(N,) group ids of any hashable type -> ((N,) int64 codes in 0..G-1, G)."""
    g = groups if isinstance(groups, (pd.Series, pd.Index)) else np.asarray(groups)
    if g.ndim != 1:
        raise SchemaError(f"groups: expected a 1-D array, got shape {g.shape}")
    if len(g) != n:
        raise SchemaError(f"groups: length {len(g)} does not match labels length {n}")
    codes, uniques = pd.factorize(g, sort=False)  # a Series keeps its fast (Arrow) path
    codes = np.asarray(codes)
    if (codes < 0).any():
        rows = np.flatnonzero(codes < 0)[:5].tolist()
        raise SchemaError(f"groups: null group id(s), first at rows {rows}")
    return codes.astype(np.int64, copy=False), len(uniques)


def _k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SchemaError(f"k: expected an integer >= 1, got {k!r}")
    return int(k)


def _discounts(k: int) -> np.ndarray:
    """(k,) 1/log2(rank+1) for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
