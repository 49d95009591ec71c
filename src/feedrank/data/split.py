"""Time splits: train on the past, test on the future, and prove they never overlap.

    events = load_dataset("var/world").events_frame()      # ts as float epoch seconds
    split = time_split(events, test_fraction=0.2)
    check_no_overlap(split, events)                        # SchemaError if anything leaks
    train, test = split.train_frame(events), split.test_frame(events)
    json.dumps(split_to_dict(split))

Rule (see ``docs/metrics.md``): events with ``ts >= boundary`` are test, the rest train.
The boundary is the event timestamp that puts the number of test events closest to
``test_fraction * N`` (the ``1 - test_fraction`` quantile of ``ts``, snapped to an event
time) among the *clean cuts*: times at which no request (impression group, same
``request_id``) is open, i.e. no request has its first event before the boundary and a
later event at or after it. So every request lands whole on the side of its first event.

On a busy log a clean cut near the quantile may not exist (requests are always open).
``straddle="snap"`` (default) then fails loudly when the best clean cut moves the test
fraction by more than ``max_fraction_shift`` (and by more than ``MIN_SLACK_EVENTS`` events); ``straddle="drop"`` keeps the quantile
boundary and drops the requests that straddle it (all their events, on both sides),
reporting how many.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import pandas as pd

from feedrank.errors import SchemaError
from feedrank.types import EVENT_KINDS

# With straddle="snap", a clean cut may always be this many events off the target.
MIN_SLACK_EVENTS = 10

__all__ = ["SideStats", "TimeSplit", "time_split", "check_no_overlap", "split_to_dict"]


@dataclass(frozen=True)
class SideStats:
    """Counts for one side of a split."""

    n_events: int
    by_kind: dict[str, int]
    n_users: int
    n_items: int
    n_requests: int
    ts_min: float | None
    ts_max: float | None


@dataclass(frozen=True, eq=False)
class TimeSplit:
    """A time split of an events frame.

    ``train_idx`` / ``test_idx`` / ``dropped_idx`` are (n,) int64 *positional* row indices
    (for ``events.iloc``), sorted ascending, disjoint, together covering every row.
    """

    boundary: float  # epoch seconds: train ts < boundary <= test ts
    test_fraction: float  # requested
    quantile_ts: float  # the unsnapped (1 - test_fraction) quantile of ts
    straddle: str  # "snap" or "drop"
    train_idx: np.ndarray
    test_idx: np.ndarray
    dropped_idx: np.ndarray
    n_dropped_requests: int
    train: SideStats
    test: SideStats

    @property
    def n_events(self) -> int:
        return len(self.train_idx) + len(self.test_idx) + len(self.dropped_idx)

    @property
    def realized_test_fraction(self) -> float:
        kept = len(self.train_idx) + len(self.test_idx)
        return len(self.test_idx) / kept if kept else float("nan")

    def train_mask(self) -> np.ndarray:
        """(N,) bool, True for train rows."""
        m = np.zeros(self.n_events, dtype=bool)
        m[self.train_idx] = True
        return m

    def test_mask(self) -> np.ndarray:
        """(N,) bool, True for test rows."""
        m = np.zeros(self.n_events, dtype=bool)
        m[self.test_idx] = True
        return m

    def train_frame(self, events: pd.DataFrame) -> pd.DataFrame:
        return events.iloc[self.train_idx]

    def test_frame(self, events: pd.DataFrame) -> pd.DataFrame:
        return events.iloc[self.test_idx]


def _ts(events: pd.DataFrame) -> np.ndarray:
    if not isinstance(events, pd.DataFrame):
        raise SchemaError(f"events: expected a pandas DataFrame, got {type(events).__name__}")
    if "ts" not in events.columns:
        raise SchemaError("events: missing column 'ts' (float epoch seconds; use Dataset.events_frame())")
    col = events["ts"]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise SchemaError(f"events: column 'ts' must be float epoch seconds, got dtype {col.dtype}")
    ts = col.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(ts)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise SchemaError(f"events: column 'ts' has {int(bad.sum())} null/non-finite value(s), first at rows {rows}")
    return ts


def _request_codes(n: int, fact: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(N,) int64 request code per row; rows without a request id get a code of their own."""
    if "request_id" not in fact:
        return np.arange(n, dtype=np.int64)
    codes, uniques = fact["request_id"]
    codes = codes.copy()
    missing = codes < 0
    if missing.any():
        codes[missing] = len(uniques) + np.arange(int(missing.sum()), dtype=np.int64)
    return codes


def _request_spans(ts: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per request code: (first ts, last ts), each (R,)."""
    n_req = int(codes.max()) + 1
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
    first = np.full(n_req, np.nan)
    last = np.full(n_req, np.nan)
    first[sc[starts]] = np.minimum.reduceat(ts[order], starts)
    last[sc[starts]] = np.maximum.reduceat(ts[order], starts)
    return first, last


def _factorized(events: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Codes (-1 for null) and uniques of the id/kind columns that are present."""
    out = {}
    for col in ("kind", "user_id", "item_id", "request_id"):
        if col in events.columns:
            codes, uniques = events[col].factorize(sort=False)
            out[col] = (np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object))
    return out


def _side_stats(idx: np.ndarray, ts: np.ndarray, fact: dict[str, tuple[np.ndarray, np.ndarray]]) -> SideStats:
    def present(col: str) -> np.ndarray:
        codes, uniques = fact[col]
        c = codes[idx]
        return np.bincount(c[c >= 0], minlength=len(uniques))

    by_kind = {k: 0 for k in EVENT_KINDS}
    if "kind" in fact:
        counts = present("kind")
        for name, c in zip(fact["kind"][1].tolist(), counts.tolist(), strict=True):
            by_kind[str(name)] = int(c)

    def n_distinct(col: str) -> int:
        return int(np.count_nonzero(present(col))) if col in fact else 0

    return SideStats(
        n_events=int(len(idx)),
        by_kind=by_kind,
        n_users=n_distinct("user_id"),
        n_items=n_distinct("item_id"),
        n_requests=n_distinct("request_id"),
        ts_min=float(ts[idx].min()) if len(idx) else None,
        ts_max=float(ts[idx].max()) if len(idx) else None,
    )


def time_split(
    events: pd.DataFrame,
    test_fraction: float,
    *,
    straddle: Literal["snap", "drop", "auto"] = "snap",
    max_fraction_shift: float = 0.05,
) -> TimeSplit:
    """Split ``events`` by time so that about ``test_fraction`` of them are test.

    Args:
        events: (N rows) DataFrame with ``ts`` (float epoch seconds); ``request_id``,
            ``kind``, ``user_id``, ``item_id`` are used when present.
        test_fraction: in (0, 1).
        straddle: ``"snap"`` moves the boundary to the nearest clean cut (no request open
            across it); ``"drop"`` keeps the quantile boundary and drops straddling requests.
        max_fraction_shift: with ``"snap"``, the largest allowed |realized - requested|
            test fraction (but always at least ``MIN_SLACK_EVENTS`` events); beyond it a
            ``SchemaError`` suggests ``straddle="drop"``.
            ``"auto"`` snaps when a clean cut lies within ``max_fraction_shift``, else drops:
            in a busy stream (a million users) some request is open at nearly every instant.

    Returns:
        A ``TimeSplit``; ``train ts < boundary <= test ts`` and no request on both sides.
    """
    if not (isinstance(test_fraction, (int, float)) and 0.0 < float(test_fraction) < 1.0):
        raise SchemaError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    if straddle not in ("snap", "drop", "auto"):
        raise SchemaError(f"straddle: expected 'snap', 'drop' or 'auto', got {straddle!r}")
    if straddle == "auto":
        try:
            return time_split(events, test_fraction, straddle="snap", max_fraction_shift=max_fraction_shift)
        except SchemaError as exc:
            if "time_split:" not in str(exc):
                raise
            return time_split(events, test_fraction, straddle="drop", max_fraction_shift=max_fraction_shift)
    ts = _ts(events)
    n = len(ts)
    if n < 2:
        raise SchemaError(f"events: need at least 2 events to split, got {n}")
    fact = _factorized(events)
    codes = _request_codes(n, fact)
    first, last = _request_spans(ts, codes)

    sorted_ts = np.sort(ts)
    uniq = np.unique(sorted_ts)
    if len(uniq) < 2:
        raise SchemaError("events: all events share one timestamp; a time split is impossible")
    target = float(test_fraction) * n
    # candidate boundary uniq[i], i >= 1 (train never empty); its test count:
    n_test = n - np.searchsorted(sorted_ts, uniq[1:], side="left")
    err = np.abs(n_test - target)
    quantile_ts = float(np.quantile(ts, 1.0 - float(test_fraction)))

    # requests open across a candidate t: first < t <= last  -> uniq indices [lo, hi)
    open_req = first < last
    lo = np.searchsorted(uniq, first[open_req], side="right")
    hi = np.searchsorted(uniq, last[open_req], side="right")
    cover = np.bincount(lo, minlength=len(uniq) + 1) - np.bincount(hi, minlength=len(uniq) + 1)
    straddled = np.cumsum(cover)[1 : len(uniq)] > 0  # for candidates uniq[1:]

    dropped_req = np.zeros(len(first), dtype=bool)
    if straddle == "snap":
        if straddled.all():
            raise SchemaError(
                "time_split: no clean cut exists (some request is open at every event time); "
                "use straddle='drop' to drop the requests that cross the boundary"
            )
        err_clean = np.where(straddled, np.inf, err)
        i = int(np.argmin(err_clean))
        realized = n_test[i] / n
        # tiny frames cannot honour a fraction exactly: always allow a few events of slack
        if abs(n_test[i] - target) > max(max_fraction_shift * n, MIN_SLACK_EVENTS):
            raise SchemaError(
                f"time_split: the nearest clean cut (no request crossing it) gives test fraction "
                f"{realized:.4f}, not {float(test_fraction):.4f} (allowed shift {max_fraction_shift}); "
                "use straddle='drop' to keep the quantile boundary and drop crossing requests"
            )
        boundary = float(uniq[1 + i])
    else:
        i = int(np.argmin(err))
        boundary = float(uniq[1 + i])
        dropped_req = (first < boundary) & (last >= boundary)

    row_dropped = dropped_req[codes]
    row_test = ~row_dropped & (ts >= boundary)
    row_train = ~row_dropped & ~row_test
    train_idx = np.flatnonzero(row_train)
    test_idx = np.flatnonzero(row_test)
    dropped_idx = np.flatnonzero(row_dropped)
    if not len(train_idx) or not len(test_idx):
        side = "train" if not len(train_idx) else "test"
        raise SchemaError(
            f"time_split: {side} is empty after dropping {int(dropped_req.sum())} request(s) "
            f"that cross the boundary {boundary}"
        )
    return TimeSplit(
        boundary=boundary,
        test_fraction=float(test_fraction),
        quantile_ts=quantile_ts,
        straddle=straddle,
        train_idx=train_idx,
        test_idx=test_idx,
        dropped_idx=dropped_idx,
        n_dropped_requests=int(dropped_req.sum()),
        train=_side_stats(train_idx, ts, fact),
        test=_side_stats(test_idx, ts, fact),
    )


def check_no_overlap(split: TimeSplit, events: pd.DataFrame) -> None:
    """Raise ``SchemaError`` listing every way ``split`` leaks between train and test.

    Checks: indices in range and disjoint; every train ts < boundary; every test ts >=
    boundary; no ``request_id`` (when the column exists) on both sides.
    """
    ts = _ts(events)
    n = len(ts)
    problems: list[str] = []
    parts = {"train": split.train_idx, "test": split.test_idx, "dropped": split.dropped_idx}
    for name, idx in parts.items():
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            problems.append(f"{name}_idx: indices out of range for {n} events")
    if problems:
        raise SchemaError("time split does not match the events frame", problems)
    seen = np.bincount(np.concatenate([np.asarray(i, dtype=np.int64) for i in parts.values()]), minlength=n)
    if (seen > 1).any():
        rows = np.flatnonzero(seen > 1)[:5].tolist()
        problems.append(f"rows assigned to more than one side, first at rows {rows}")
    b = split.boundary
    tr, te = split.train_idx, split.test_idx
    late = tr[ts[tr] >= b]
    if len(late):
        problems.append(f"{len(late)} train event(s) at or after the boundary {b}, first at rows {late[:5].tolist()}")
    early = te[ts[te] < b]
    if len(early):
        problems.append(f"{len(early)} test event(s) before the boundary {b}, first at rows {early[:5].tolist()}")
    if "request_id" in events.columns:
        codes, uniques = events["request_id"].factorize(sort=False)
        codes = np.asarray(codes, dtype=np.int64)
        in_tr = np.bincount(codes[tr][codes[tr] >= 0], minlength=len(uniques)) > 0
        in_te = np.bincount(codes[te][codes[te] >= 0], minlength=len(uniques)) > 0
        both = np.flatnonzero(in_tr & in_te)
        if len(both):
            examples = [np.asarray(uniques, dtype=object)[i] for i in both[:5]]
            problems.append(f"{len(both)} request_id(s) on both sides, e.g. {examples}")
    if problems:
        raise SchemaError("train and test overlap", problems)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def split_to_dict(split: TimeSplit) -> dict[str, Any]:
    """A JSON-ready summary (no row indices): boundary, fractions and counts per side."""

    def side(s: SideStats) -> dict[str, Any]:
        return {
            "n_events": s.n_events,
            "by_kind": dict(s.by_kind),
            "n_users": s.n_users,
            "n_items": s.n_items,
            "n_requests": s.n_requests,
            "ts_min": s.ts_min,
            "ts_max": s.ts_max,
            "ts_min_iso": _iso(s.ts_min),
            "ts_max_iso": _iso(s.ts_max),
        }

    return {
        "boundary_ts": split.boundary,
        "boundary_iso": _iso(split.boundary),
        "quantile_ts": split.quantile_ts,
        "test_fraction": split.test_fraction,
        "realized_test_fraction": split.realized_test_fraction,
        "straddle": split.straddle,
        "n_events": split.n_events,
        "n_dropped_events": int(len(split.dropped_idx)),
        "n_dropped_requests": split.n_dropped_requests,
        "train": side(split.train),
        "test": side(split.test),
    }
