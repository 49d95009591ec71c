"""The ``OnlineStore`` Protocol: what every online feature backend offers.

    store = open_store("memory://")          # or sqlite:///var/f.db, redis://127.0.0.1:6379/0
    store.put_user("u1", {"n_clicks": 3.0}, ts=now)
    store.put_items({"n1": {"ctr": 0.1}, "n2": {"ctr": 0.2}}, ts=now)
    store.put_item_table(["n1", "n2"], ["ctr"], np.array([[0.1], [0.2]]), ts=now)   # the same, columnar
    batch = store.get_items(["n1", "n2", "n9"], ["ctr"], now=now)
    batch.values            # (3, 1) float64, NaN where missing
    batch.found             # (3,) bool
    store.incr(["n1:click"], window_s=300, ts=now)
    store.get_counts(["n1:click"], window_s=300, now=now)   # (1,) float64

Model:

* **Features** are flat ``{name: float}`` records per user and per item, each written
  with a time ``ts``. A record older than the store's ``ttl_s`` at read time is *cold*:
  reads treat it as missing and ``evict(now)`` deletes it (memory stays bounded).
  ``put_*`` merges into the existing record (names not given are kept).
* **Counters** are sliding-window sums: ``incr(keys, window_s, amount, ts)`` adds to the
  bucket of ``ts`` (``COUNTER_BUCKETS`` buckets per window); ``get_counts`` sums the
  buckets that overlap ``(now - window_s, now]``. Resolution is one bucket
  (``window_s / COUNTER_BUCKETS``); buckets older than the window are pruned.
* **Snapshot/restore** (``snapshot(path)`` / ``restore(path)``): one file holding every
  record and counter, written atomically (tmp file, fsync, rename).

Every backend passes the same contract suite, ``tests/unit/features/test_store_contract.py``.
Times are epoch seconds passed in by the caller (no clock inside), so tests can move time.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import orjson

COUNTER_BUCKETS = 12
SNAPSHOT_VERSION = 1
Record = dict[str, float]


@dataclass(frozen=True)
class FeatureBatch:
    """The result of a batched read.

    ``values`` (N, F) float64 in the order of the ids and names asked for (NaN where the
    id or the name is missing); ``found`` (N,) bool, True where the record exists and is
    not cold; ``ts`` (N,) float64 write time of each record (NaN when not found);
    ``bad_type`` (N, F) bool, True where a stored value is not a number (a corrupt record:
    its ``values`` entry is NaN), or None when every value read was a number."""

    values: np.ndarray
    found: np.ndarray
    ts: np.ndarray
    bad_type: np.ndarray | None = None
    present: np.ndarray | None = None  # (N, F) bool: a value was stored (None: unknown)

    def filled(self, defaults: Sequence[float]) -> np.ndarray:
        """``values`` with NaN replaced by each column's default. (N, F) float64."""
        d = np.asarray(defaults, dtype=np.float64)[None, :]
        return np.where(np.isnan(self.values), d, self.values)


@runtime_checkable
class OnlineStore(Protocol):
    """Typed online features (users, items), sliding-window counters, TTL, snapshots."""

    url: str
    ttl_s: float

    def put_user(self, user_id: str, features: Mapping[str, float], ts: float) -> None: ...

    def get_user(self, user_id: str, now: float) -> Record | None:
        """The user's record, or None when missing or cold."""
        ...

    def put_items(self, rows: Mapping[str, Mapping[str, float]], ts: float) -> None:
        """Merge ``{item_id: {name: value}}`` into the item records (one round trip)."""
        ...

    def put_item_table(self, item_ids: Sequence[str], names: Sequence[str], values: np.ndarray, ts: float,
                       extra: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """``put_items`` of an (N, F) table of ``names`` for N ``item_ids`` (plus ``extra``
        records), without a dict per item where the backend can (``StoreBase`` builds them)."""
        ...

    def get_items(self, item_ids: Sequence[str], names: Sequence[str], now: float) -> FeatureBatch:
        """Batched read of ``names`` for ``item_ids`` (one round trip)."""
        ...

    def incr(self, keys: Sequence[str], window_s: int, ts: float, amount: float | Sequence[float] = 1.0) -> None:
        """Add ``amount`` (one per key, or the same for all) at time ``ts``."""
        ...

    def get_counts(self, keys: Sequence[str], window_s: int, now: float) -> np.ndarray:
        """(N,) float64 sums over ``(now - window_s, now]``; 0 for unknown keys."""
        ...

    def evict(self, now: float) -> int:
        """Delete cold records (older than ``ttl_s``) and expired counter buckets; the
        number of feature records deleted."""
        ...

    def export_state(self) -> dict[str, Any]:
        """Everything, as plain data: {"users"|"items": {id: [ts, record]}, "counters":
        {window: {key: {bucket: value}}}}."""
        ...

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Replace everything with ``state`` (as from ``export_state``)."""
        ...

    def snapshot(self, path: str | Path) -> Path: ...

    def restore(self, path: str | Path) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------- shared helpers


def check_features(features: Mapping[str, float]) -> Record:
    """A plain ``{str: float}`` copy; raises TypeError for a non-numeric value or name."""
    out: Record = {}
    for k, v in features.items():
        if not isinstance(k, str):
            raise TypeError(f"feature name must be a str, got {type(k).__name__}")
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"feature {k!r}: expected a number, got {type(v).__name__}")
        out[k] = float(v)
    return out


def check_table(item_ids: Sequence[str], names: Sequence[str], values: Any) -> np.ndarray:
    """``values`` as an (N, F) float64 array for N ``item_ids`` and F ``names`` (str);
    raises TypeError / ValueError naming what does not fit."""
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"feature names must be str, got {type(bad[0]).__name__}")
    raw = np.asarray(values)
    if raw.dtype.kind not in "iuf":  # as put_items: no strings, bools or objects
        raise TypeError(f"feature table: expected numbers, got dtype {raw.dtype}")
    table = raw.astype(np.float64, copy=False)
    if table.shape != (len(item_ids), len(names)):
        raise ValueError(f"feature table has shape {table.shape}, expected ({len(item_ids)}, {len(names)}): "
                         "one row per item id, one column per name")
    return table


def bucket_of(ts: float, window_s: int) -> int:
    """The counter bucket number of ``ts`` for a window: floor(ts / (window/BUCKETS))."""
    return int(math.floor(ts * COUNTER_BUCKETS / window_s))


def live_buckets(window_s: int, now: float) -> tuple[int, int]:
    """Inclusive (first, last) bucket numbers that ``get_counts`` sums at ``now``."""
    last = bucket_of(now, window_s)
    return last - COUNTER_BUCKETS + 1, last


def amounts(keys: Sequence[str], amount: float | Sequence[float]) -> list[float]:
    if isinstance(amount, (int, float, np.integer, np.floating)):
        return [float(amount)] * len(keys)
    out = [float(a) for a in amount]
    if len(out) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(out)} amounts")
    return out


def is_cold(ts: float, now: float, ttl_s: float) -> bool:
    return ttl_s > 0 and now - ts > ttl_s


def batch_from_records(records: Sequence[tuple[float, Mapping[str, float]] | None], names: Sequence[str],
                       now: float, ttl_s: float) -> FeatureBatch:
    """Assemble a ``FeatureBatch`` from per-id (ts, record) pairs (None = missing)."""
    n, f = len(records), len(names)
    values = np.full((n, f), np.nan, dtype=np.float64)
    found = np.zeros(n, dtype=bool)
    tss = np.full(n, np.nan, dtype=np.float64)
    bad: np.ndarray | None = None
    present = np.zeros((n, f), dtype=bool)
    for i, rec in enumerate(records):
        if rec is None or is_cold(rec[0], now, ttl_s):
            continue
        found[i] = True
        tss[i] = rec[0]
        r = rec[1]
        for j, name in enumerate(names):
            v = r.get(name)
            if v is None:
                continue
            present[i, j] = True
            if isinstance(v, float) or (isinstance(v, (int, np.integer, np.floating)) and not isinstance(v, bool)):
                values[i, j] = v
            else:  # planted or corrupt: not a number
                if bad is None:
                    bad = np.zeros((n, f), dtype=bool)
                bad[i, j] = True
    return FeatureBatch(values, found, tss, bad, present)


def parse_number(v: bytes | str) -> float | bytes | str:
    """A stored value as a float, or unchanged when it is not a number (the caller's
    validation reports it as ``wrong_type``)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def write_snapshot(store: OnlineStore, path: str | Path) -> Path:
    """Atomically write ``store.export_state()`` to ``path`` (JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": SNAPSHOT_VERSION, "url": store.url, "state": store.export_state()}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_snapshot(path: str | Path) -> dict[str, Any]:
    doc = orjson.loads(Path(path).read_bytes())
    if not isinstance(doc, dict) or doc.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"{path}: not a feature-store snapshot (version {SNAPSHOT_VERSION})")
    state = doc["state"]
    # JSON object keys are strings: bucket numbers back to int
    counters = {int(w): {k: {int(b): float(v) for b, v in bk.items()} for k, bk in keys.items()}
                for w, keys in state.get("counters", {}).items()}
    return {"users": state.get("users", {}), "items": state.get("items", {}), "counters": counters}
