"""The ranker's dense features, computed the same way in training and at serving (pure).

All inputs are aligned (N,) arrays for N (user, item, time) rows. Two groups:

* base features (``BASE_FEATURE_NAMES``): tower similarity, the user's category share in
  their click history, item counters, item age, user clicks, hour and weekday;
* engagement features (``ENGAGEMENT_FEATURE_NAMES``), from raw counters in an
  ``Engagement`` record: the user's impressions / clicks / hides in the item's category,
  the user's activity, position-debiased item and creator CTRs (impressions weighted by
  the examination probability of the slot they were shown at), time-decayed item
  counters (windows of ~6 h and ~24 h), item hide rate, mean log dwell of the item and its
  creator, the creator's group, and the user's position-debiased taste for the item's
  category (examination-weighted impressions, debiased CTRs shrunk to the user's and the
  category's, the category's share of the user's clicks).

Training (``pipeline/examples.py``, point in time) and serving (``ranking/stats.py``,
online counters) fill the same ``Engagement`` record, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASE_FEATURE_NAMES: tuple[str, ...] = (
    "tower_sim",
    "category_affinity",
    "log_item_impressions",
    "log_item_clicks",
    "item_ctr_smoothed",
    "log_age_hours",
    "log_user_clicks",
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",
)
ENGAGEMENT_FEATURE_NAMES: tuple[str, ...] = (
    "user_cat_ctr",
    "log_user_cat_impressions",
    "log_user_cat_clicks",
    "log_user_cat_hides",
    "log_user_impressions",
    "user_ctr",
    "item_ctr_debiased",
    "item_ctr_6h",
    "item_ctr_24h",
    "log_item_clicks_6h",
    "item_hide_rate",
    "item_log_dwell",
    "creator_ctr_debiased",
    "log_creator_clicks",
    "creator_log_dwell",
    "creator_is_new",
    "age_days",
    # the user's position-debiased feedback on this category (see ``engagement_features``)
    "log_user_cat_eimps",
    "user_cat_ctr_debiased",
    "user_cat_ctr_vs_category",
    "log_user_cat_ctr_vs_category",
    "log_user_cat_click_share",
    "category_ctr",
    "log_user_cat_clicks_3d",
    "log_user_cat_eimps_3d",
    "user_cat_ctr_3d",
    "log_user_cat_click_share_3d",
)
FEATURE_NAMES: tuple[str, ...] = BASE_FEATURE_NAMES + ENGAGEMENT_FEATURE_NAMES
N_BASE_FEATURES = len(BASE_FEATURE_NAMES)
N_FEATURES = len(FEATURE_NAMES)
N_POSITIONS = 20
# time constants of the decayed item counters (seconds)
DECAY_TAUS_S: tuple[float, float] = (6 * 3600.0, 24 * 3600.0)
DWELL_PRIOR_WEIGHT = 5.0
# time constant of the user's decayed (recent) counters: tastes drift, recent clicks say more
USER_DECAY_TAU_S = 3 * 86400.0


@dataclass
class Engagement:
    """Raw counters behind the engagement features; every field is (N,) float64.

    ``*_eimps`` are impressions weighted by the examination probability of their slot
    (``exam[position]``), so ``clicks / eimps`` is a position-debiased CTR. ``item_*_6h`` /
    ``item_*_24h`` are exponentially decayed counts (``sum exp(-(t - t_e) / tau)``).
    ``*_dwell_sum`` sums ``log1p(dwell_ms / 1000)`` over ``*_dwell_n`` dwell events.
    ``category_ctr`` / ``category_click_share`` are per-row copies of train-time constants
    of the row's category (its debiased CTR and its share of all clicks; 0 when unknown).
    ``*_3d`` are the user's counters decayed with ``USER_DECAY_TAU_S``.

    The user's totals (``user_imps``, ``user_clicks``, ``user_eimps``, ``user_clicks_3d``) may
    be (1,) arrays, the same for every row: ``engagement_features`` broadcasts them (serving's
    ``CategoryEngagement`` records use that)."""

    user_cat_imps: np.ndarray
    user_cat_clicks: np.ndarray
    user_cat_hides: np.ndarray
    user_imps: np.ndarray
    user_clicks: np.ndarray
    item_eimps: np.ndarray
    item_clicks: np.ndarray
    item_hides: np.ndarray
    item_imps: np.ndarray
    item_clicks_6h: np.ndarray
    item_eimps_6h: np.ndarray
    item_clicks_24h: np.ndarray
    item_eimps_24h: np.ndarray
    item_dwell_sum: np.ndarray
    item_dwell_n: np.ndarray
    creator_eimps: np.ndarray
    creator_clicks: np.ndarray
    creator_dwell_sum: np.ndarray
    creator_dwell_n: np.ndarray
    creator_is_new: np.ndarray
    user_cat_eimps: np.ndarray
    user_eimps: np.ndarray
    category_ctr: np.ndarray
    category_click_share: np.ndarray
    user_cat_clicks_3d: np.ndarray
    user_cat_eimps_3d: np.ndarray
    user_clicks_3d: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> Engagement:
        """No engagement known (a cold system): every feature falls back to its prior."""
        return cls(**{f: np.zeros(n) for f in cls.__dataclass_fields__})


def smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray, prior_ctr: float, prior_weight: float) -> np.ndarray:
    """(clicks + w * prior) / (impressions + w): shrinks small counts to the global CTR."""
    return (clicks + prior_weight * prior_ctr) / (impressions + prior_weight)


def engagement_features(eng: Engagement, age_s: np.ndarray, prior_ctr: float, prior_weight: float,
                        dwell_prior: float, out: np.ndarray | None = None) -> np.ndarray:
    """Returns (N, len(ENGAGEMENT_FEATURE_NAMES)) float64 in that order (written into ``out``,
    a float64 (N, E) array or view, when given).

    ``dwell_prior`` is the global mean of ``log1p(dwell_ms / 1000)`` (train side).

    The user-category block estimates the user's taste for the row's category from the
    user's own impressions there weighted by slot examination (``user_cat_eimps``): a
    debiased CTR shrunk to the user's debiased CTR, the same shrunk to the category's CTR
    (and its log), and the log of the category's share of the user's clicks with the
    category's global click share as a one-click prior (a topic the user never clicked
    stays near the crowd's share; one click there moves it a lot); then the same from the
    user's decayed counters (``*_3d``), which follow a drifting taste."""
    uc = _user_category_columns(eng, prior_ctr, prior_weight)
    cols = uc[:_USER_HEAD] + _item_columns(eng, age_s, prior_ctr, prior_weight, dwell_prior) + uc[_USER_HEAD:]
    if out is None:
        out = np.empty((len(age_s), len(ENGAGEMENT_FEATURE_NAMES)))
    for j, col in enumerate(cols):  # a (1,) column (a user's constant) broadcasts
        out[:, j] = col
    return out


# engagement columns: 0.._USER_HEAD-1 and _ITEM_END.. depend on the user and the row's category
# only (``_user_category_columns``); _USER_HEAD.._ITEM_END-1 on the item and its creator
_USER_HEAD, _ITEM_END = 6, 17


def _user_category_columns(eng: Engagement, prior_ctr: float, prior_weight: float) -> list[np.ndarray]:
    """The engagement columns that depend only on the user and the row's category, in
    column order (0..5, then 17..26): reads only the user and category fields of ``eng``."""
    w = prior_weight
    user_ctr = smoothed_ctr(eng.user_clicks, eng.user_imps, prior_ctr, w)
    user_dctr = smoothed_ctr(eng.user_clicks, eng.user_eimps, prior_ctr, w)
    cat_ctr = np.asarray(eng.category_ctr, dtype=np.float64)
    vs_cat = smoothed_ctr(eng.user_cat_clicks, eng.user_cat_eimps, cat_ctr, 3.0)
    # log1p(max(x, 0)) of the six per-category counters in one (6, n) pass (numpy's per-call
    # cost dominates at a request's sizes; elementwise results do not depend on the batching)
    logs = _log1p_pos(eng.user_cat_imps, eng.user_cat_clicks, eng.user_cat_hides, eng.user_cat_eimps,
                      eng.user_cat_clicks_3d, eng.user_cat_eimps_3d)
    return [
        smoothed_ctr(eng.user_cat_clicks, eng.user_cat_imps, user_ctr, 5.0),
        logs[0],
        logs[1],
        logs[2],
        np.log1p(np.maximum(eng.user_imps, 0)),
        user_ctr,
        logs[3],
        smoothed_ctr(eng.user_cat_clicks, eng.user_cat_eimps, user_dctr, 5.0),
        vs_cat,
        np.log(np.maximum(vs_cat, 1e-6)),
        np.log((np.maximum(eng.user_cat_clicks, 0) + np.maximum(eng.category_click_share, 1e-3))
               / (np.maximum(eng.user_clicks, 0) + 1.0)),
        cat_ctr,
        logs[4],
        logs[5],
        smoothed_ctr(eng.user_cat_clicks_3d, eng.user_cat_eimps_3d, cat_ctr, 3.0),
        np.log((np.maximum(eng.user_cat_clicks_3d, 0) + np.maximum(eng.category_click_share, 1e-3))
               / (np.maximum(eng.user_clicks_3d, 0) + 1.0)),
    ]


def _item_columns(eng: Engagement, age_s: np.ndarray, prior_ctr: float, prior_weight: float,
                  dwell_prior: float) -> list[np.ndarray]:
    """The engagement columns of the item and its creator (6..16), in column order: reads
    only the item and creator fields of ``eng``."""
    w = prior_weight
    # the seven ratios (x + a) / (y + b) in one (7, n) pass: smoothed CTRs (a = w * prior, b = w)
    # and the dwell means (a = DWELL_PRIOR_WEIGHT * dwell_prior, b = DWELL_PRIOR_WEIGHT), each
    # the same arithmetic as ``smoothed_ctr`` per element
    a_ctr, a_dwell = w * prior_ctr, DWELL_PRIOR_WEIGHT * dwell_prior
    ratio = ((np.stack([eng.item_clicks, eng.item_clicks_6h, eng.item_clicks_24h, eng.item_hides, eng.item_dwell_sum,
                        eng.creator_clicks, eng.creator_dwell_sum]).astype(np.float64, copy=False)
              + np.array([[a_ctr], [a_ctr], [a_ctr], [w * 0.0], [a_dwell], [a_ctr], [a_dwell]]))
             / (np.stack([eng.item_eimps, eng.item_eimps_6h, eng.item_eimps_24h, eng.item_imps, eng.item_dwell_n,
                          eng.creator_eimps, eng.creator_dwell_n]).astype(np.float64, copy=False)
                + np.array([[w], [w], [w], [w], [DWELL_PRIOR_WEIGHT], [w], [DWELL_PRIOR_WEIGHT]])))
    logs = _log1p_pos(eng.item_clicks_6h, eng.creator_clicks)
    return [
        ratio[0],
        ratio[1],
        ratio[2],
        logs[0],
        ratio[3],
        ratio[4],
        ratio[5],
        logs[1],
        ratio[6],
        np.asarray(eng.creator_is_new, dtype=np.float64),
        np.maximum(np.asarray(age_s, dtype=np.float64), 0) / 86400.0,
    ]


def _log1p_pos(*fields: np.ndarray) -> np.ndarray:
    """(len(fields), n) ``log1p(max(x, 0))`` of equally long arrays, in one pass."""
    x = np.stack(fields).astype(np.float64, copy=False)
    np.maximum(x, 0, out=x)
    return np.log1p(x, out=x)


@dataclass(frozen=True)
class CategoryEngagement:
    """One user's engagement counters for N candidates, split (serving's read): ``per_category``
    holds the user and category fields with one entry per category code (C,), or (1,) for the
    user's totals; ``per_item`` the item and creator fields (N,); ``categories`` (N,) int64 the
    candidates' category codes. The unused fields of each record are (1,) zeros.
    ``engagement_features_by_category`` computes the user-category columns once per category
    and gathers them: bitwise what ``engagement_features`` gives for the full (N,) record."""

    per_category: Engagement
    per_item: Engagement
    categories: np.ndarray


def engagement_features_by_category(eng: CategoryEngagement, age_s: np.ndarray, prior_ctr: float, prior_weight: float,
                                    dwell_prior: float, out: np.ndarray | None = None) -> np.ndarray:
    """``engagement_features`` of the full record ``eng`` stands for (same columns, same
    values), with the 16 user-category columns computed on C categories instead of N rows."""
    cats = np.asarray(eng.categories, dtype=np.int64)
    n = len(cats)
    if out is None:
        out = np.empty((n, len(ENGAGEMENT_FEATURE_NAMES)))
    uc = _user_category_columns(eng.per_category, prior_ctr, prior_weight)
    n_cat = max(len(c) for c in uc)
    table = np.empty((len(uc), n_cat))  # column-major like ``ranking_features``' block
    for j, col in enumerate(uc):
        table[j] = col
    per_row = table[:, cats]  # (16, N); a category code outside the table raises IndexError
    out[:, :_USER_HEAD] = per_row[:_USER_HEAD].T
    out[:, _ITEM_END:] = per_row[_USER_HEAD:].T
    for j, col in enumerate(_item_columns(eng.per_item, age_s, prior_ctr, prior_weight, dwell_prior), start=_USER_HEAD):
        out[:, j] = col
    return out


def ranking_features(
    tower_sim: np.ndarray,
    category_affinity: np.ndarray,
    item_impressions: np.ndarray,
    item_clicks: np.ndarray,
    age_s: np.ndarray,
    user_clicks: np.ndarray | float,
    ts: np.ndarray | float,
    prior_ctr: float,
    prior_weight: float,
    engagement: Engagement | CategoryEngagement | None = None,
    dwell_prior: float = 0.0,
) -> np.ndarray:
    """Returns (N, N_FEATURES) float32 in FEATURE_NAMES order; NaN/inf replaced by 0.

    Without ``engagement`` the engagement columns hold their priors (a cold start).
    ``user_clicks`` and ``ts`` may be scalars (serving: one user at one time): their
    columns are computed once and broadcast, the same values as from (N,) copies
    (elementwise maths does not depend on the array's length)."""
    ts = np.asarray(ts, dtype=np.float64)
    if ts.ndim == 0:
        ts = ts.reshape(1)
    if np.ndim(user_clicks) == 0:
        user_clicks = np.asarray(user_clicks, dtype=np.float64).reshape(1)
    hours = np.remainder(ts / 3600.0, 24.0)
    days = np.remainder(ts / 86400.0 + 3.0, 7.0)
    n = len(tower_sim)
    cols = [
        np.asarray(tower_sim, dtype=np.float64),
        np.asarray(category_affinity, dtype=np.float64),
        np.log1p(np.maximum(item_impressions, 0)),
        np.log1p(np.maximum(item_clicks, 0)),
        smoothed_ctr(np.asarray(item_clicks, np.float64), np.asarray(item_impressions, np.float64), prior_ctr, prior_weight),
        np.log1p(np.maximum(age_s, 0) / 3600.0),
        np.log1p(np.maximum(user_clicks, 0)),
        np.sin(2 * np.pi * hours / 24),
        np.cos(2 * np.pi * hours / 24),
        np.sin(2 * np.pi * days / 7),
        np.cos(2 * np.pi * days / 7),
    ]
    # one float64 block, feature-major (each column written contiguously; no stack / concatenate
    # copies), then float32 rows
    block = np.empty((N_FEATURES, n), dtype=np.float64)
    for j, col in enumerate(cols):
        block[j] = col
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if isinstance(engagement, CategoryEngagement):
            engagement_features_by_category(engagement, np.asarray(age_s, dtype=np.float64), prior_ctr, prior_weight,
                                            dwell_prior, out=block[N_BASE_FEATURES:].T)
        else:
            engagement_features(engagement if engagement is not None else Engagement.zeros(n),
                                np.asarray(age_s, dtype=np.float64), prior_ctr, prior_weight, dwell_prior,
                                out=block[N_BASE_FEATURES:].T)
    x = block.T.astype(np.float32, order="C")
    bad = ~np.isfinite(x)  # NaN and +-inf -> 0 (np.nan_to_num's result, at a fraction of its cost)
    if bad.any():
        x[bad] = 0.0
    return x
