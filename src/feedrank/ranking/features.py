"""The ranker's dense features, computed the same way in training and at serving (pure).

All inputs are aligned (N,) arrays for N (user, item, time) rows.
"""

from __future__ import annotations

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
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
N_FEATURES = len(FEATURE_NAMES)
N_POSITIONS = 20


def smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray, prior_ctr: float, prior_weight: float) -> np.ndarray:
    """(clicks + w * prior) / (impressions + w): shrinks small counts to the global CTR."""
    return (clicks + prior_weight * prior_ctr) / (impressions + prior_weight)


def ranking_features(
    tower_sim: np.ndarray,
    category_affinity: np.ndarray,
    item_impressions: np.ndarray,
    item_clicks: np.ndarray,
    age_s: np.ndarray,
    user_clicks: np.ndarray,
    ts: np.ndarray,
    prior_ctr: float,
    prior_weight: float,
) -> np.ndarray:
    """Returns (N, N_FEATURES) float32 in FEATURE_NAMES order; NaN/inf replaced by 0."""
    ts = np.asarray(ts, dtype=np.float64)
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
        np.broadcast_to(np.sin(2 * np.pi * hours / 24), (n,)),
        np.broadcast_to(np.cos(2 * np.pi * hours / 24), (n,)),
        np.broadcast_to(np.sin(2 * np.pi * days / 7), (n,)),
        np.broadcast_to(np.cos(2 * np.pi * days / 7), (n,)),
    ]
    x = np.stack(cols, axis=1).astype(np.float32)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
