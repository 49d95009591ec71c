"""Point-in-time examples for the ranker, built from the event log of a dataset.

Every feature of an impression at time ``t`` is computed from events strictly before
``t`` (histories, counters): the same numbers the online system would have had then.
Training and offline evaluation both use this, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from feedrank.config import RankingConfig

from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import ClickLog, category_affinity, counts_before
from feedrank.ranking.features import DECAY_TAUS_S, N_POSITIONS, USER_DECAY_TAU_S, Engagement, ranking_features
from feedrank.ranking.calibration import Calibrator, fit_calibrator
from feedrank.ranking.model import Ranker, logits, predict_heads
from feedrank.ranking.stats import EngagementState
from feedrank.ranking.train import train_distilled, train_ranker
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
    dwell_ms: np.ndarray | None = None  # (E,) float64, NaN where not a dwell event

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
        dwell = (pd.to_numeric(ev["dwell_ms"], errors="coerce").to_numpy(dtype=np.float64)
                 if "dwell_ms" in ev.columns else np.full(len(ev), np.nan))
        return cls(ev["ts"].to_numpy(dtype=np.float64), user_codes.astype(np.int64), np.asarray(user_ids, dtype=object),
                   item_idx.astype(np.int64), kind, pos, req_codes.astype(np.int64), dwell)

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
class EngagementSpec:
    """What turns raw events into engagement counters, fixed at training time.

    ``exam`` (N_POSITIONS,) examination probability per 0-based slot, relative to slot 0
    (estimated from train CTR by position; all ones when positions are unknown);
    ``dwell_prior`` mean ``log1p(dwell_s)`` of train dwell events; ``creator_codes`` (N,)
    int64 creator index per catalogue item; ``creator_new`` (N,) 1.0 where the item's
    creator is in group ``new`` (from an items column ``creator_group``), else 0;
    ``category_ctr`` / ``category_share`` (C,) each category's debiased train CTR and share
    of train clicks (``estimate_category_priors``; zeros when unknown)."""

    exam: np.ndarray
    dwell_prior: float
    creator_codes: np.ndarray
    creator_new: np.ndarray
    category_ctr: np.ndarray
    category_share: np.ndarray

    @property
    def n_creators(self) -> int:
        return int(self.creator_codes.max(initial=-1)) + 1

    def exam_at(self, position: np.ndarray) -> np.ndarray:
        """(R,) examination weight of each slot (unknown position -1 counts as slot 0)."""
        return self.exam[np.clip(position, 0, N_POSITIONS - 1)]

    def category_priors(self, cat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((R,) category CTR, (R,) category click share) of category indices ``cat``
        (0 for categories the spec does not know)."""
        cat = np.asarray(cat, dtype=np.int64)
        ok = (cat >= 0) & (cat < len(self.category_ctr))
        c = np.where(ok, cat, 0)
        return (np.where(ok, self.category_ctr[c], 0.0) if len(self.category_ctr) else np.zeros(len(cat)),
                np.where(ok, self.category_share[c], 0.0) if len(self.category_share) else np.zeros(len(cat)))

    def to_dict(self) -> dict:
        return {"exam": [float(v) for v in self.exam], "dwell_prior": float(self.dwell_prior),
                "category_ctr": [float(v) for v in self.category_ctr],
                "category_share": [float(v) for v in self.category_share]}

    @classmethod
    def build(cls, items: pd.DataFrame, catalog: ItemCatalog, exam: np.ndarray | None = None,
              dwell_prior: float = 0.0, category_ctr: np.ndarray | None = None,
              category_share: np.ndarray | None = None) -> EngagementSpec:
        codes, _ = pd.factorize(pd.Series(catalog.creators), sort=False)
        new = np.zeros(len(catalog))
        if "creator_group" in items.columns:
            new = (items["creator_group"].astype(str).to_numpy() == "new").astype(np.float64)
        arr = lambda v: np.zeros(0) if v is None else np.asarray(v, dtype=np.float64)  # noqa: E731
        return cls(np.ones(N_POSITIONS) if exam is None else np.asarray(exam, dtype=np.float64), float(dwell_prior),
                   codes.astype(np.int64), new, arr(category_ctr), arr(category_share))

    def with_catalog(self, items: pd.DataFrame, catalog: ItemCatalog) -> EngagementSpec:
        """The same learned constants (exam, dwell prior, category priors) for another catalogue."""
        return EngagementSpec.build(items, catalog, self.exam, self.dwell_prior, self.category_ctr, self.category_share)


def estimate_category_priors(ev: EventArrays, rows: np.ndarray, cat_idx: np.ndarray, n_categories: int,
                             exam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From train events ``rows``: ((C,) clicks / examination-weighted impressions per
    category, (C,) each category's share of the clicks, add-one smoothed)."""
    imp = rows[ev.kind[rows] == KIND_CODES["impression"]]
    clk = rows[ev.kind[rows] == KIND_CODES["click"]]
    ew = exam[np.clip(ev.position[imp], 0, N_POSITIONS - 1)]
    eimps = np.bincount(cat_idx[ev.item_idx[imp]], weights=ew, minlength=n_categories)[:n_categories]
    clicks = np.bincount(cat_idx[ev.item_idx[clk]], minlength=n_categories)[:n_categories].astype(np.float64)
    glob = clicks.sum() / max(eimps.sum(), 1.0)
    ctr = (clicks + 10.0 * glob) / (eimps + 10.0)
    return ctr, (clicks + 1.0) / (clicks.sum() + n_categories)


def fit_engagement_spec(ev: EventArrays, train_rows: np.ndarray, items: pd.DataFrame, catalog: ItemCatalog,
                        n_categories: int) -> EngagementSpec:
    """The spec learned from the train events ``train_rows`` (E_train,) int64 indices."""
    exam, dwell_prior = estimate_exam_and_dwell(ev, train_rows)
    ctr, share = estimate_category_priors(ev, train_rows, catalog.cat_idx, n_categories, exam)
    return EngagementSpec.build(items, catalog, exam, dwell_prior, ctr, share)


def estimate_exam_and_dwell(ev: EventArrays, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """From train events ``rows``: (N_POSITIONS,) CTR by slot / CTR at slot 0, made
    non-increasing and clipped to [0.02, 1] (ones when positions are unknown or sparse),
    and the mean ``log1p(dwell_s)`` of the dwell events (0 if none)."""
    imp = rows[ev.kind[rows] == 0]
    pos = ev.position[imp]
    exam = np.ones(N_POSITIONS)
    if len(imp) and (pos >= 0).mean() > 0.5:
        labels = ev.impression_labels(imp)
        p = np.clip(pos, 0, N_POSITIONS - 1)
        n = np.bincount(p, minlength=N_POSITIONS).astype(np.float64)
        c = np.bincount(p, weights=labels, minlength=N_POSITIONS)
        ctr = (c + 1.0) / (n + 1.0 / max(c.sum() / max(n.sum(), 1), 1e-4))
        if n[0] >= 100 and c[0] > 0:
            exam = np.minimum.accumulate(np.clip(ctr / ctr[0], 0.02, 1.0))
            exam[n < 100] = exam[np.flatnonzero(n >= 100).max()]  # unseen deep slots: the last measured
    dw = ev.dwell_ms[rows] if ev.dwell_ms is not None else np.zeros(0)
    dw = dw[(ev.kind[rows] == 2) & np.isfinite(dw)]
    return exam, float(np.log1p(np.maximum(dw, 0) / 1000.0).mean()) if len(dw) else 0.0


class PrefixSums:
    """Per-group prefix sums over events sorted by (group, ts), reused for many weight
    vectors and one set of queries (the sort and the search are done once)."""

    def __init__(self, groups: np.ndarray, ts: np.ndarray, n_groups: int, query_groups: np.ndarray,
                 query_ts: np.ndarray) -> None:
        self.log = ClickLog.build(np.asarray(groups, dtype=np.int64), np.asarray(ts, dtype=np.float64),
                                  np.arange(len(groups)), n_groups)  # log.items: original row per sorted row
        self.qg = np.asarray(query_groups, dtype=np.int64)
        self.qt = np.asarray(query_ts, dtype=np.float64)
        self.pos = self.log.positions_before(self.qg, self.qt) if len(groups) else np.zeros(len(self.qg), np.int64)
        self.has_before = self.pos > self.log.starts[self.qg] if len(groups) else np.zeros(len(self.qg), bool)
        has = self.log.ends > self.log.starts
        self.origin = np.zeros(n_groups)
        self.origin[has] = self.log.ts[self.log.ends[has] - 1]
        self.codes = pd.Categorical.from_codes(self.log.user_codes, categories=np.arange(n_groups)) if len(groups) else None

    def query(self, weights: np.ndarray | None = None, tau: float | None = None) -> np.ndarray:
        """(Q,) sum of ``weights`` (default 1) over each query's group strictly before its ts;
        with ``tau`` each event counts ``w * exp(-(query_ts - ts) / tau)``."""
        if self.codes is None:
            return np.zeros(len(self.qg))
        n = len(self.log.items)
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)[self.log.items]
        if tau is not None:  # origin = the group's last event, so terms stay <= 1
            w = w * np.exp(np.maximum((self.log.ts - self.origin[self.log.user_codes]) / tau, -700.0))
        cw = pd.Series(w).groupby(self.codes, observed=False).cumsum().to_numpy()
        out = np.where(self.has_before, cw[np.maximum(self.pos - 1, 0)], 0.0)
        if tau is not None:
            out = out * np.exp(np.clip((self.origin[self.qg] - self.qt) / tau, -700.0, 700.0))
        return out


def sums_before(groups: np.ndarray, ts: np.ndarray, weights: np.ndarray, query_groups: np.ndarray,
                query_ts: np.ndarray, n_groups: int, tau: float | None = None) -> np.ndarray:
    """(Q,) float64: sum of ``weights`` over events of the query's group with ts < query ts.

    With ``tau`` each event counts ``w * exp(-(query_ts - ts) / tau)`` (a decayed counter);
    exact while a group's events span < ~700 tau."""
    return PrefixSums(groups, ts, n_groups, query_groups, query_ts).query(weights, tau)


def engagement_before(ev: EventArrays, users: np.ndarray, items: np.ndarray, ts: np.ndarray, catalog: ItemCatalog,
                      n_categories: int, spec: EngagementSpec) -> Engagement:
    """Point-in-time raw counters for (R,) query rows: events strictly before each ts."""
    cat = catalog.cat_idx
    imp, clk, hid, dwl = (ev.kind == KIND_CODES[k] for k in ("impression", "click", "hide", "dwell"))
    ew = spec.exam_at(ev.position)
    dwell_log = np.log1p(np.maximum(np.nan_to_num(ev.dwell_ms, nan=0.0) if ev.dwell_ms is not None else np.zeros(len(ev)), 0) / 1000.0)
    n_items, n_users, n_cr = len(catalog), ev.n_users, max(spec.n_creators, 1)
    uc_ev = ev.user_codes * n_categories + cat[ev.item_idx]
    uc_q = users * n_categories + cat[items]
    cr_ev, cr_q = spec.creator_codes[ev.item_idx], spec.creator_codes[items]
    cat_ctr, cat_share = spec.category_priors(cat[items])

    cache: dict[tuple[str, str], PrefixSums] = {}
    masks = {"imp": imp, "clk": clk, "hid": hid, "dwl": dwl}
    keys = {"uc": (uc_ev, uc_q, n_users * n_categories), "u": (ev.user_codes, users, n_users),
            "i": (ev.item_idx, items, n_items), "cr": (cr_ev, cr_q, n_cr)}

    def s(m: str, g: str, w: np.ndarray | None = None, tau: float | None = None) -> np.ndarray:
        if (m, g) not in cache:
            g_ev, g_q, n = keys[g]
            cache[(m, g)] = PrefixSums(g_ev[masks[m]], ev.ts[masks[m]], n, g_q, ts)
        return cache[(m, g)].query(None if w is None else w[masks[m]], tau)

    t6, t24 = DECAY_TAUS_S
    return Engagement(
        user_cat_imps=s("imp", "uc"),
        user_cat_clicks=s("clk", "uc"),
        user_cat_hides=s("hid", "uc"),
        user_imps=s("imp", "u"),
        user_clicks=s("clk", "u"),
        item_eimps=s("imp", "i", ew),
        item_clicks=s("clk", "i"),
        item_hides=s("hid", "i"),
        item_imps=s("imp", "i"),
        item_clicks_6h=s("clk", "i", tau=t6),
        item_eimps_6h=s("imp", "i", ew, tau=t6),
        item_clicks_24h=s("clk", "i", tau=t24),
        item_eimps_24h=s("imp", "i", ew, tau=t24),
        item_dwell_sum=s("dwl", "i", dwell_log),
        item_dwell_n=s("dwl", "i"),
        creator_eimps=s("imp", "cr", ew),
        creator_clicks=s("clk", "cr"),
        creator_dwell_sum=s("dwl", "cr", dwell_log),
        creator_dwell_n=s("dwl", "cr"),
        creator_is_new=spec.creator_new[items].astype(np.float64),
        user_cat_eimps=s("imp", "uc", ew),
        user_eimps=s("imp", "u", ew),
        category_ctr=cat_ctr,
        category_click_share=cat_share,
        user_cat_clicks_3d=s("clk", "uc", tau=USER_DECAY_TAU_S),
        user_cat_eimps_3d=s("imp", "uc", ew, tau=USER_DECAY_TAU_S),
        user_clicks_3d=s("clk", "u", tau=USER_DECAY_TAU_S),
    )


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
    dwell_ms: np.ndarray | None = None  # (R,) float64 dwell of the clicked impression, NaN if none


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
    spec: EngagementSpec | None = None,
) -> RankingExamples:
    """Features for the impression events at ``rows``, from all events strictly before each.

    With ``spec`` the engagement features are filled (else they hold their priors)."""
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
    eng = None if spec is None else engagement_before(ev, users, items, ts, catalog, n_categories, spec)
    dense = ranking_features(sim, aff, item_imps, item_clicks, catalog.age_seconds(items, ts), user_clicks, ts,
                             prior_ctr, prior_weight, engagement=eng, dwell_prior=0.0 if spec is None else spec.dwell_prior)
    return RankingExamples(
        dense=dense,
        category=catalog.cat_idx[items],
        position=np.maximum(ev.position[rows], 0),
        labels=ev.impression_labels(rows),
        groups=ev.request_codes[rows],
        users=users,
        items=items,
        ts=ts,
        dwell_ms=impression_dwell(ev, rows),
    )


def impression_dwell(ev: EventArrays, rows: np.ndarray) -> np.ndarray:
    """(R,) dwell_ms of the dwell event with the same request and item as each impression
    row (NaN when there is none: not clicked, or the data has no dwell)."""
    out = np.full(len(rows), np.nan)
    if ev.dwell_ms is None:
        return out
    d = (ev.kind == KIND_CODES["dwell"]) & (ev.request_codes >= 0) & np.isfinite(ev.dwell_ms)
    if not d.any():
        return out
    n_items = int(ev.item_idx.max(initial=0)) + 1
    keys = ev.request_codes[d] * n_items + ev.item_idx[d]
    order = np.argsort(keys, kind="stable")
    keys, vals = keys[order], ev.dwell_ms[d][order]
    q = ev.request_codes[rows] * n_items + ev.item_idx[rows]
    j = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    hit = (keys[j] == q) & (ev.request_codes[rows] >= 0)
    out[hit] = vals[j[hit]]
    return out


def engagement_state(ev: EventArrays, catalog: ItemCatalog, n_categories: int, spec: EngagementSpec) -> EngagementState:
    """The serving counters after every event of ``ev`` (what ``engagement_before`` would
    give a query just after the last event), for the bundle's ``ranker_state.npz``."""
    n_items = len(catalog)
    st = EngagementState(n_items, n_categories, catalog.cat_idx, spec.creator_codes, spec.creator_new, spec.exam,
                         *spec.category_priors(np.arange(n_categories)))
    imp, clk, hid, dwl = (ev.kind == KIND_CODES[k] for k in ("impression", "click", "hide", "dwell"))
    ew = spec.exam_at(ev.position)
    dwell = np.log1p(np.maximum(np.nan_to_num(ev.dwell_ms, nan=0.0), 0) / 1000.0) if ev.dwell_ms is not None else np.zeros(len(ev))
    end = float(ev.ts.max(initial=0.0))

    def bc(mask: np.ndarray, idx: np.ndarray, n: int, w: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(idx[mask], weights=None if w is None else w[mask], minlength=n).astype(np.float64)

    it = ev.item_idx
    item = np.stack([bc(imp, it, n_items, ew), bc(clk, it, n_items), bc(hid, it, n_items), bc(imp, it, n_items),
                     bc(dwl, it, n_items, dwell), bc(dwl, it, n_items)])
    t6, t24 = DECAY_TAUS_S
    d6, d24 = np.exp(-(end - ev.ts) / t6), np.exp(-(end - ev.ts) / t24)
    du = np.exp(-(end - ev.ts) / USER_DECAY_TAU_S)
    decay = np.stack([bc(clk, it, n_items, d6), bc(imp, it, n_items, ew * d6), bc(clk, it, n_items, d24),
                      bc(imp, it, n_items, ew * d24)])
    cr, k = spec.creator_codes[it], st.creator.shape[1]
    creator = np.stack([bc(imp, cr, k, ew), bc(clk, cr, k), bc(dwl, cr, k, dwell), bc(dwl, cr, k)])
    uc = ev.user_codes * n_categories + catalog.cat_idx[it]
    nu = ev.n_users
    per = [bc(m, uc, nu * n_categories).reshape(nu, n_categories) for m in (imp, clk, hid)]
    rows = np.concatenate(per + [bc(imp, ev.user_codes, nu)[:, None], bc(clk, ev.user_codes, nu)[:, None],
                                 bc(imp, uc, nu * n_categories, ew).reshape(nu, n_categories),
                                 bc(imp, ev.user_codes, nu, ew)[:, None],
                                 bc(clk, uc, nu * n_categories, du).reshape(nu, n_categories),
                                 bc(imp, uc, nu * n_categories, ew * du).reshape(nu, n_categories),
                                 bc(clk, ev.user_codes, nu, du)[:, None], np.full((nu, 1), end)], axis=1)
    active = np.flatnonzero(rows[:, : 3 * n_categories + 2].sum(axis=1) > 0)
    # least recently active first: a server that keeps fewer users (``EngagementState.limit_users``)
    # drops the rows of the users seen longest ago, not of those seen first
    last = np.full(nu, -np.inf)
    np.maximum.at(last, ev.user_codes, ev.ts)
    active = active[np.argsort(last[active], kind="stable")]
    return st.load_arrays(item, decay, np.full(n_items, end), creator, ev.user_ids[active].astype(str), rows[active])


@dataclass
class RankingStage:
    """Everything the ranking stage of a bundle holds."""

    ranker: Ranker
    small: Ranker | None
    calibrator: Calibrator
    state: EngagementState | None
    spec: EngagementSpec | None
    info: dict[str, Any]


def train_ranking_stage(cfg: RankingConfig, ev: EventArrays, train_rows: np.ndarray, catalog: ItemCatalog,
                        items: pd.DataFrame, two_tower: TwoTower, item_vectors: np.ndarray, n_categories: int,
                        history_len: int, prior_ctr: float, rng: np.random.Generator, show_progress: bool = True,
                        say: Callable[[str], None] = print) -> RankingStage | None:
    """Train the ranker on the train impressions (``train_rows`` (E,) bool): the newest
    ``calibration_fraction`` of them (by time) are held out to fit the calibrator; then
    the distilled ranker, and the serving counters over all events. None without impressions."""
    imp_rows = np.flatnonzero(train_rows & ev.mask("impression"))
    if not len(imp_rows):
        return None
    imp_rows = imp_rows[-cfg.max_train_examples:]
    spec = None
    if cfg.engagement_features:
        spec = fit_engagement_spec(ev, np.flatnonzero(train_rows), items, catalog, n_categories)
    ex = ranking_examples(ev, imp_rows, catalog, two_tower, item_vectors, n_categories, history_len, prior_ctr,
                          cfg.ctr_prior, spec)
    n_cal = int(len(imp_rows) * cfg.calibration_fraction) if cfg.calibration != "none" else 0
    # cut at a request boundary so no impression is split between the two sides
    cut = len(imp_rows) - n_cal
    while 0 < cut < len(imp_rows) and ex.groups[cut] == ex.groups[cut - 1] and ex.groups[cut] >= 0:
        cut += 1
    fit, cal = slice(0, cut), slice(cut, len(imp_rows))
    say(f"ranker: {cut:,} train impressions ({int(ex.labels[fit].sum()):,} clicks), {len(imp_rows) - cut:,} held out "
        f"for calibration; {cfg.interaction} interactions, {cfg.loss} loss")
    log_dwell = np.log1p(ex.dwell_ms / 1000.0)
    protected = None if spec is None else spec.creator_new[ex.items] > 0
    ranker, report = train_ranker(cfg, ex.dense[fit], ex.category[fit], ex.position[fit], ex.labels[fit], n_categories,
                                  rng, show_progress, groups=ex.groups[fit], log_dwell=log_dwell[fit],
                                  protected=None if protected is None else protected[fit],
                                  init_examination=None if spec is None else spec.exam)
    say(f"ranker trained: loss {report.final_loss:.4f} in {report.seconds:.1f}s")
    calibrator = Calibrator()
    info: dict[str, Any] = {"train_report": report.__dict__, "spec": None if spec is None else spec.to_dict()}
    if cut < len(imp_rows) and ex.labels[cal].sum() > 0:
        z = logits(ranker, ex.dense[cal], ex.category[cal])
        calibrator = fit_calibrator(cfg.calibration, z, ex.labels[cal])
        _, dw = predict_heads(ranker, ex.dense[cal], ex.category[cal])
        info["mean_log_dwell"] = float(dw.mean())
    small = None
    if cfg.distill_hidden:
        small, dreport = train_distilled(cfg, ranker, ex.dense[fit], ex.category[fit], rng, show_progress)
        info["distill_report"] = dreport.__dict__
        say(f"distilled ranker {list(cfg.distill_hidden)} trained in {dreport.seconds:.1f}s")
    state = None if spec is None else engagement_state(ev, catalog, n_categories, spec)
    return RankingStage(ranker, small, calibrator, state, spec, info)


def spec_from_info(info: dict[str, Any] | None, items: pd.DataFrame, catalog: ItemCatalog) -> EngagementSpec | None:
    """The bundle's ``EngagementSpec`` (manifest ``ranking.spec``) for this catalogue; None if
    the ranker was trained without engagement features."""
    spec = (info or {}).get("spec")
    if not spec:
        return None
    return EngagementSpec.build(items, catalog, np.asarray(spec["exam"]), float(spec["dwell_prior"]),
                                spec.get("category_ctr"), spec.get("category_share"))
