"""The retrieval prior's terms as offsets of the two-tower training logit (``retrieval.train_offsets``).

Serving scores ``w_tower * u.v/T + w_cat * log(a_u[cat_i]) + w_pop * log1p(clicks_i(t)) -
w_age * age_days(i, t)`` (``retrieval/prior.py``). Trained alone, ``u.v`` has to re-learn the
user's category preference (badly: the fitted prior then gives the tower logit little
weight), and in-batch negatives include items not yet published at the click's time. With
offsets, the training logit of click ``e`` (user history before ``t_e``) against item ``j`` is

    u_e . v_j / T  +  sum_k  w_k * f_k(e, j)  -  log q_j          (w_k: the model's ``offset_weights``)

with the features ``f_k`` of the prior, at the click's time ``t_e``:

    category    log a_e[cat_j]             a_e: the smoothed category share of e's history
    popularity  log1p(train clicks on j strictly before t_e)
    age         -age_days(j, t_e)          (and j is no negative of e when published after t_e)

so ``u . v`` learns what those terms do not already explain. The weights are learned with the
towers; serving keeps its own prior fit on top (the offsets' weights are not used at serving).
Everything is point in time: a click never sees a later click's count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import ClickLog

DAY_S = 86400.0
OFFSET_TERMS = ("category", "popularity", "age")
# the training recipes (``retrieval.train_offsets``) and the terms each puts in the logit
OFFSET_CHOICES: dict[str, tuple[str, ...]] = {
    "none": (),
    "category": ("category",),
    "prior": ("category", "popularity", "age"),
}
INITIAL_WEIGHTS = {"category": 1.0, "popularity": 0.5, "age": 0.5}


def offset_terms(choice: str) -> tuple[str, ...]:
    """The terms of a ``retrieval.train_offsets`` choice (ValueError naming the choices)."""
    if choice not in OFFSET_CHOICES:
        raise ValueError(f"retrieval.train_offsets must be one of {sorted(OFFSET_CHOICES)}, got {choice!r}")
    return OFFSET_CHOICES[choice]


def parse_terms(spec: str) -> tuple[str, ...]:
    """``TwoTowerDims.offset_terms`` ("category,popularity,age"; "" = none) -> the terms."""
    terms = tuple(t for t in spec.split(",") if t)
    bad = [t for t in terms if t not in OFFSET_TERMS]
    if bad:
        raise ValueError(f"unknown two-tower offset terms {bad}; known: {list(OFFSET_TERMS)}")
    return terms


def initial_weights(terms: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([INITIAL_WEIGHTS[t] for t in terms], dtype=torch.float32)


@dataclass(frozen=True)
class TrainOffsets:
    """Point-in-time features of (click, item) pairs for the training logit.

        off = TrainOffsets.build(("category", "age"), catalog, clicks)
        feats, dead = off.pairs(aff, ts_b, items)        # (K, B, M) float32, (B, M) bool
        feats, dead = off.rows(aff, ts_b, items_b)       # (K, B), (B,): item b for row b
    """

    terms: tuple[str, ...]
    item_cat: np.ndarray        # (N,) category code by catalogue row
    published_at: np.ndarray    # (N,) epoch seconds, NaN = unknown (age 0, always live)
    click_key: np.ndarray       # (C,) sorted item * span + (ts - base): the train clicks by (item, ts)
    item_start: np.ndarray      # (N,) first position of each item in click_key
    base: float
    span: float

    @classmethod
    def build(cls, terms: tuple[str, ...], catalog: ItemCatalog, clicks: ClickLog) -> TrainOffsets:
        bad = [t for t in terms if t not in OFFSET_TERMS]
        if bad:
            raise ValueError(f"unknown two-tower offset terms {bad}; known: {list(OFFSET_TERMS)}")
        n = len(catalog)
        items = np.asarray(clicks.items, dtype=np.int64)
        ts = np.asarray(clicks.ts, dtype=np.float64)
        if len(items) and (items.min() < 0 or items.max() >= n):
            raise ValueError(f"TrainOffsets: click item rows must be in 0..{n - 1}")
        base = float(ts.min()) - 1.0 if len(ts) else 0.0
        # every query time lies within the clicks' span (+1 s margin each side): keys never collide across items
        span = float(ts.max() - ts.min()) + 4.0 if len(ts) else 4.0
        key = np.sort(items.astype(np.float64) * span + (ts - base))
        start = np.searchsorted(key, np.arange(n, dtype=np.float64) * span, side="left")
        return cls(tuple(terms), np.asarray(catalog.cat_idx, dtype=np.int64),
                   np.asarray(catalog.published_at, dtype=np.float64), key, start, base, span)

    def _clicks_before(self, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Train clicks on ``items`` strictly before ``ts`` (broadcast shapes)."""
        t = np.clip(ts - self.base, 0.5, self.span - 1.0)
        q = items.astype(np.float64) * self.span + t
        return (np.searchsorted(self.click_key, q, side="left") - self.item_start[items]).astype(np.float32)

    def _features(self, aff: np.ndarray, rows: np.ndarray, items: np.ndarray, ts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of pairs (rows[...], items[...]) at times ts[...] (same shapes)."""
        out = []
        for t in self.terms:
            if t == "category":
                out.append(np.log(aff[rows, self.item_cat[items]]))
            elif t == "popularity":
                out.append(np.log1p(self._clicks_before(items, ts)))
            else:
                pub = self.published_at[items]
                age = np.where(np.isfinite(pub), (ts - np.nan_to_num(pub)) / DAY_S, 0.0)
                out.append(-np.maximum(age, 0.0))
        pub = self.published_at[items]
        dead = np.isfinite(pub) & (pub > ts) if "age" in self.terms else np.zeros(items.shape, dtype=bool)
        feats = np.stack(out).astype(np.float32) if out else np.zeros((0, *items.shape), dtype=np.float32)
        return torch.from_numpy(feats), torch.from_numpy(dead)

    def pairs(self, aff: np.ndarray, ts: np.ndarray, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, B, M) features of every (row b, item m) pair and (B, M) "not yet published at
        t_b" (such an item is no candidate of that click: masked out of its softmax).
        ``aff`` (B, C) the rows' category shares, ``ts`` (B,) their click times, ``items`` (M,)."""
        b, m = len(ts), len(items)
        rows = np.broadcast_to(np.arange(b)[:, None], (b, m))
        return self._features(aff, rows, np.broadcast_to(items[None, :], (b, m)),
                              np.broadcast_to(np.asarray(ts, dtype=np.float64)[:, None], (b, m)))

    def rows(self, aff: np.ndarray, ts: np.ndarray, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, B) features of (row b, ``items[b]``) and (B,) "not yet published"."""
        return self._features(aff, np.arange(len(ts)), np.asarray(items, dtype=np.int64), np.asarray(ts, dtype=np.float64))
