"""What every ``OnlineStore`` backend does the same way, over five storage primitives.

    class MyStore(StoreBase):
        def _put_records(self, table, rows, ts): ...        # merge validated features
        def _user_record(self, user_id): ...                 # (ts, Record) | None
        def _item_records(self, item_ids, names): ...        # [(ts, Record) | None]
        def _add_counts(self, window_s, keys, bucket, amounts, ts): ...
        def _sum_counts(self, window_s, keys, first, last): ...   # (K,) float64
        # plus evict, export_state, import_state, close

``StoreBase`` validates features before anything is written (``check_features``: a bad
batch writes nothing), judges cold records against the caller's ``now`` and ``ttl_s``,
buckets counter increments and picks the live buckets of a window, and implements
``snapshot``/``restore`` through ``export_state``/``import_state``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from feedrank.features.store.protocol import (
    FeatureBatch,
    Record,
    amounts,
    batch_from_records,
    bucket_of,
    check_features,
    check_table,
    is_cold,
    live_buckets,
    read_snapshot,
    write_snapshot,
)


class StoreBase:
    ttl_s: float

    # ------------------------------------------------------------------ primitives
    def _put_records(self, table: str, rows: Mapping[str, Record], ts: float) -> None:
        """Merge ``rows`` (id -> validated features) into ``table`` ("users" | "items") at ``ts``."""
        raise NotImplementedError

    def _user_record(self, user_id: str) -> tuple[float, Record] | None:
        raise NotImplementedError

    def _item_records(self, item_ids: list[str], names: Sequence[str]) -> list[tuple[float, Record] | None]:
        """One (ts, features) or None per id (at least ``names`` of each record)."""
        raise NotImplementedError

    def _add_counts(self, window_s: int, keys: list[str], bucket: int, amounts: list[float], ts: float) -> None:
        raise NotImplementedError

    def _sum_counts(self, window_s: int, keys: list[str], first: int, last: int) -> np.ndarray:
        """(K,) float64: each key's sum over buckets ``first..last`` of ``window_s``."""
        raise NotImplementedError

    def export_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def import_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ OnlineStore
    def put_user(self, user_id: str, features: Mapping[str, float], ts: float) -> None:
        self._put_records("users", {str(user_id): check_features(features)}, float(ts))

    def get_user(self, user_id: str, now: float) -> Record | None:
        rec = self._user_record(str(user_id))
        if rec is None or is_cold(rec[0], now, self.ttl_s):
            return None
        return dict(rec[1])

    def put_items(self, rows: Mapping[str, Mapping[str, float]], ts: float) -> None:
        checked = {str(k): check_features(v) for k, v in rows.items()}  # validate all before writing any
        if checked:
            self._put_records("items", checked, float(ts))

    def put_item_table(self, item_ids: Sequence[str], names: Sequence[str], values: np.ndarray, ts: float,
                       extra: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """``put_items`` of a table: row ``i`` of ``values`` (N, F) holds ``names`` of
        ``item_ids[i]``; ``extra``: more records in the same write. This default builds the
        records and calls ``put_items`` (one round trip); a backend may write it columnar."""
        table = check_table(item_ids, names, values)
        rows: dict[str, Mapping[str, float]] = {str(i): dict(zip(names, r)) for i, r in zip(item_ids, table.tolist())}
        rows.update(extra or {})
        self.put_items(rows, ts)

    def get_items(self, item_ids: Sequence[str], names: Sequence[str], now: float) -> FeatureBatch:
        return batch_from_records(self._item_records([str(i) for i in item_ids], names), names, now, self.ttl_s)

    def incr(self, keys: Sequence[str], window_s: int, ts: float, amount: float | Sequence[float] = 1.0) -> None:
        window_s = int(window_s)
        amts = amounts(keys, amount)
        self._add_counts(window_s, [str(k) for k in keys], bucket_of(ts, window_s), amts, float(ts))

    def get_counts(self, keys: Sequence[str], window_s: int, now: float) -> np.ndarray:
        first, last = live_buckets(int(window_s), now)
        return self._sum_counts(int(window_s), [str(k) for k in keys], first, last)

    def snapshot(self, path: str | Path) -> Path:
        return write_snapshot(self, path)

    def restore(self, path: str | Path) -> None:
        self.import_state(read_snapshot(path))
