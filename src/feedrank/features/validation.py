"""Feature validation at serving time: corrupt values are caught, not served.

    specs = learn_specs({"ctr": train_ctr, "imps": train_imps})     # at training time
    v = FeatureValidator(specs, ttl_s=3600)
    clean = v.check_record("item:n1", {"ctr": 0.1, "imps": float("nan")}, ts=t, now=now)
    clean_cols = v.check_columns(["n1", "n2"], ["ctr"], values, ts=ts, now=now)
    v.counts()        # {("ctr", "nan"): 1, ...}  -> /metrics

A value is replaced by its spec's default, counted by (feature, reason) and logged with
its key when it is: ``wrong_type`` (not a real number), ``nan`` (NaN or infinite),
``out_of_range`` (outside [lo, hi] learned from training data, widened by a margin),
``stale`` (its record was written more than ``ttl_s`` before ``now``), or ``missing``.
Logging is rate-limited per (feature, reason) so a broken upstream cannot flood the logs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

REASONS = ("wrong_type", "nan", "out_of_range", "stale", "missing")


@dataclass(frozen=True)
class FeatureSpec:
    """Valid range and default of one numeric feature."""

    name: str
    lo: float = -math.inf
    hi: float = math.inf
    default: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "lo": self.lo, "hi": self.hi, "default": self.default}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "FeatureSpec":
        return cls(str(obj["name"]), float(obj["lo"]), float(obj["hi"]), float(obj["default"]))


def learn_specs(columns: Mapping[str, Sequence[float] | np.ndarray], margin: float = 0.5,
                quantiles: tuple[float, float] = (0.0, 1.0)) -> dict[str, FeatureSpec]:
    """Specs from training data: range = [q_lo, q_hi] widened by ``margin`` x its width
    on both sides (never below 0 for a column that was never negative); default = median."""
    out: dict[str, FeatureSpec] = {}
    for name, col in columns.items():
        a = np.asarray(col, dtype=np.float64)
        a = a[np.isfinite(a)]
        if not len(a):
            out[name] = FeatureSpec(name)
            continue
        lo, hi = (float(x) for x in np.quantile(a, quantiles))
        pad = margin * max(hi - lo, abs(hi), 1e-9)
        lo2 = lo - pad if lo < 0 else max(0.0, lo - pad)
        out[name] = FeatureSpec(name, lo2, hi + pad, float(np.median(a)))
    return out


class FeatureValidator:
    """Checks values against ``specs``; replaces bad ones by defaults; counts; logs."""

    def __init__(self, specs: Mapping[str, FeatureSpec], ttl_s: float = 0.0, log_every_s: float = 10.0) -> None:
        self.specs = dict(specs)
        self.ttl_s = float(ttl_s)
        self.log_every_s = float(log_every_s)
        self._counts: dict[tuple[str, str], int] = {}
        self._last_log: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def _bad(self, name: str, reason: str, key: str, value: Any, n: int = 1) -> None:
        with self._lock:
            k = (name, reason)
            self._counts[k] = self._counts.get(k, 0) + n
            t = time.monotonic()
            if t - self._last_log.get(k, -math.inf) < self.log_every_s:
                return
            self._last_log[k] = t
        log.warning("feature %s of %s: %s (value %r); serving the default", name, key, reason, value,
                    extra={"feature": name, "key": key, "reason": reason})

    def check_value(self, key: str, name: str, value: Any) -> float:
        """One value, checked; its default when bad."""
        spec = self.specs.get(name) or FeatureSpec(name)
        if value is None:
            self._bad(name, "missing", key, value)
            return spec.default
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            self._bad(name, "wrong_type", key, value)
            return spec.default
        x = float(value)
        if not math.isfinite(x):
            self._bad(name, "nan", key, value)
            return spec.default
        if x < spec.lo or x > spec.hi:
            self._bad(name, "out_of_range", key, value)
            return spec.default
        return x

    def check_record(self, key: str, record: Mapping[str, Any] | None, ts: float | None, now: float,
                     names: Sequence[str] | None = None) -> dict[str, float]:
        """Every name in ``names`` (default: all specs) from ``record``, checked; a record
        older than ``ttl_s`` (or None) yields all defaults, counted as stale (missing)."""
        names = list(names) if names is not None else list(self.specs)
        if record is None or (self.ttl_s > 0 and ts is not None and now - ts > self.ttl_s):
            reason = "missing" if record is None else "stale"
            for n in names:
                self._bad(n, reason, key, None if record is None else record.get(n))
            return {n: (self.specs.get(n) or FeatureSpec(n)).default for n in names}
        return {n: self.check_value(key, n, record.get(n)) for n in names}

    def check_columns(self, keys: Sequence[str], names: Sequence[str], values: np.ndarray,
                      ts: np.ndarray | None = None, now: float | None = None) -> np.ndarray:
        """(N, F) values (e.g. ``FeatureBatch.values``) checked column by column; rows whose
        ``ts`` is older than ``ttl_s`` at ``now`` become defaults. Returns a new (N, F) array."""
        out = np.array(values, dtype=np.float64, copy=True)
        stale = np.zeros(len(out), dtype=bool)
        if ts is not None and now is not None and self.ttl_s > 0:
            stale = (now - np.asarray(ts, dtype=np.float64)) > self.ttl_s
        for j, name in enumerate(names):
            spec = self.specs.get(name) or FeatureSpec(name)
            col = out[:, j]
            nan = ~np.isfinite(col)
            rng = ~nan & ((col < spec.lo) | (col > spec.hi))
            for reason, mask in (("nan", nan & ~stale), ("out_of_range", rng & ~stale), ("stale", stale)):
                if mask.any():
                    i = int(np.flatnonzero(mask)[0])
                    self._bad(name, reason, str(keys[i]), float(values[i, j]), int(mask.sum()))
            col[nan | rng | stale] = spec.default
        return out

    def clean(self, keys: Sequence[str], names: Sequence[str], values: np.ndarray, present: np.ndarray, *,
              ts: np.ndarray | None = None, now: float | None = None, bad_type: np.ndarray | None = None,
              fallback: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """The request-path check of one batched read (e.g. a ``FeatureBatch``): ``values``
        (N, F) as read, ``present`` (N, F) where a value was stored, ``ts`` (N,) record
        write times, ``bad_type`` (N, F) stored values that were not numbers.

        An absent value is not an error (a cold item has no record): it becomes
        ``fallback[i, j]`` (or the spec default) uncounted. Every stored bad value (wrong
        type, NaN/inf, out of range, or a record stale beyond ``ttl_s``) is counted by
        (feature, reason), logged with its key, and replaced the same way. Returns
        (clean (N, F) float64, number of stored values replaced)."""
        vals = np.asarray(values, dtype=np.float64)
        present = np.asarray(present, dtype=bool)
        n, f = vals.shape
        stale = np.zeros(n, dtype=bool)
        if ts is not None and now is not None and self.ttl_s > 0:
            with np.errstate(invalid="ignore"):
                stale = (now - np.asarray(ts, dtype=np.float64)) > self.ttl_s
        if bad_type is None and not stale.any():  # the usual read: every column at once, nothing to report
            specs = [self.specs.get(name) or FeatureSpec(name) for name in names]
            lo = np.asarray([sp.lo for sp in specs])
            hi = np.asarray([sp.hi for sp in specs])
            with np.errstate(invalid="ignore"):
                fine = ~present | ((vals >= lo) & (vals <= hi) & np.isfinite(vals))
            if fine.all():
                fill = fallback if fallback is not None else np.broadcast_to([sp.default for sp in specs], (n, f))
                return np.where(present, vals, fill), 0
        out = np.empty((n, f), dtype=np.float64)
        replaced = 0
        for j, name in enumerate(names):
            spec = self.specs.get(name) or FeatureSpec(name)
            col = vals[:, j]
            stored = present[:, j]
            wrong = stored & (bad_type[:, j] if bad_type is not None else np.zeros(n, dtype=bool))
            fresh = stored & ~wrong & ~stale
            nonfinite = ~np.isfinite(col)
            nan = fresh & nonfinite
            with np.errstate(invalid="ignore"):
                rng = fresh & ~nonfinite & ((col < spec.lo) | (col > spec.hi))
            old = stored & stale
            for reason, mask in (("wrong_type", wrong & ~stale), ("nan", nan), ("out_of_range", rng), ("stale", old)):
                if mask.any():
                    i = int(np.flatnonzero(mask)[0])
                    self._bad(name, reason, str(keys[i]), "<not a number>" if reason == "wrong_type" else float(col[i]),
                              int(mask.sum()))
            bad = wrong | nan | rng | old
            replaced += int(bad.sum())
            fill = fallback[:, j] if fallback is not None else np.full(n, spec.default)
            out[:, j] = np.where(bad | ~stored, fill, col)
        return out, replaced

    def counts(self) -> dict[tuple[str, str], int]:
        """Replacements so far by (feature, reason), for /metrics."""
        with self._lock:
            return dict(self._counts)
