"""Point-in-time examples for the ranker, built from the event log of a dataset.

Every feature of an impression at time ``t`` is computed from events strictly before
``t`` (histories, counters): the same numbers the online system would have had then.
Training and offline evaluation both use this, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import ClickLog, category_affinity, counts_before
from feedrank.ranking.features import ranking_features
from feedrank.retrieval.encode import encode_users
from feedrank.retrieval.two_tower import TwoTower

KIND_CODES = {"impression": 0, "click": 1, "dwell": 2, "hide": 3}


@dataclass
class EventArrays:
    """A dataset's events as aligned (E,) arrays."""

    ts: np.ndarray
    user_codes: np.ndarray
    user_ids: np.ndarray      # (U,) object: code -> id
    item_idx: np.ndarray
    kind: np.ndarray          # KIND_CODES
    position: np.ndarray      # -1 when unknown
    request_codes: np.ndarray  # -1 when no request id

    @classmethod
    def build(cls, events: pd.DataFrame, catalog: ItemCatalog) -> EventArrays:
        item_idx = catalog.indices(events["item_id"].to_numpy())
        keep = item_idx >= 0
        ev = events[keep]
        item_idx = item_idx[keep]
        user_codes, user_ids = pd.factorize(ev["user_id"].astype(str), sort=False)
        req = ev["request_id"]
        req_codes, _ = pd.factorize(req, sort=False, use_na_sentinel=True)
        pos = pd.to_numeric(ev["position"], errors="coerce").fillna(-1).to_numpy(dtype=np.int64)
        kind = ev["kind"].map(KIND_CODES).fillna(-1).to_numpy(dtype=np.int64)
        return cls(ev["ts"].to_numpy(dtype=np.float64), user_codes.astype(np.int64), np.asarray(user_ids, dtype=object),
                   item_idx.astype(np.int64), kind, pos, req_codes.astype(np.int64))

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def mask(self, kind: str) -> np.ndarray:
        return self.kind == KIND_CODES[kind]

    def click_log(self, rows: np.ndarray | None = None) -> ClickLog:
        m = self.mask("click")
        if rows is not None:
            sub = np.zeros(len(self), dtype=bool)
            sub[rows] = True
            m &= sub
        return ClickLog.build(self.user_codes[m], self.ts[m], self.item_idx[m], self.n_users)

    def impression_labels(self, rows: np.ndarray) -> np.ndarray:
        """1 where a click with the same request and item exists, else 0. (R,) int64."""
        clicks = self.mask("click") & (self.request_codes >= 0)
        n_items = int(self.item_idx.max(initial=0)) + 1
        click_keys = np.unique(self.request_codes[clicks] * n_items + self.item_idx[clicks])
        keys = self.request_codes[rows] * n_items + self.item_idx[rows]
        return (np.isin(keys, click_keys) & (self.request_codes[rows] >= 0)).astype(np.int64)


@dataclass
class RankingExamples:
    dense: np.ndarray       # (R, F) float32
    category: np.ndarray    # (R,) int64
    position: np.ndarray    # (R,) int64 (0 when unknown)
    labels: np.ndarray      # (R,) int64
    groups: np.ndarray      # (R,) int64 request codes
    users: np.ndarray       # (R,) int64 user codes
    items: np.ndarray       # (R,) int64 catalogue indices
    ts: np.ndarray          # (R,) float64


def ranking_examples(
    ev: EventArrays,
    rows: np.ndarray,
    catalog: ItemCatalog,
    two_tower: TwoTower,
    item_vectors: np.ndarray,
    n_categories: int,
    history_len: int,
    prior_ctr: float,
    prior_weight: float,
) -> RankingExamples:
    """Features for the impression events at ``rows``, from all events strictly before each."""
    clicks = ev.click_log()
    users, ts, items = ev.user_codes[rows], ev.ts[rows], ev.item_idx[rows]
    ends = clicks.positions_before(users, ts)
    hist = clicks.windows(users, ends, history_len)
    user_clicks = ends - clicks.starts[users]
    uvec = encode_users(two_tower, catalog, hist, ts)
    sim = np.einsum("ij,ij->i", uvec, item_vectors[items])
    aff = category_affinity(hist, catalog.cat_idx, n_categories)[np.arange(len(rows)), catalog.cat_idx[items]]
    imp = ev.mask("impression")
    clk = ev.mask("click")
    n_items = len(catalog)
    item_imps = counts_before(ev.item_idx[imp], ev.ts[imp], items, ts, n_items)
    item_clicks = counts_before(ev.item_idx[clk], ev.ts[clk], items, ts, n_items)
    dense = ranking_features(sim, aff, item_imps, item_clicks, catalog.age_seconds(items, ts), user_clicks, ts,
                             prior_ctr, prior_weight)
    return RankingExamples(
        dense=dense,
        category=catalog.cat_idx[items],
        position=np.maximum(ev.position[rows], 0),
        labels=ev.impression_labels(rows),
        groups=ev.request_codes[rows],
        users=users,
        items=items,
        ts=ts,
    )
