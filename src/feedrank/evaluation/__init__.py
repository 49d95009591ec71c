"""Evaluation: pure metrics (``metrics``), and later offline replay, off-policy estimators, reports.

Only ``metrics`` is re-exported here; heavier evaluation modules are imported by path so
that importing ``feedrank.evaluation`` stays cheap and pure.
"""

from feedrank.evaluation.metrics import (
    auc,
    coverage,
    expected_calibration_error,
    gauc,
    hit_rate_at_k,
    impression_metrics,
    mrr,
    ndcg_at_k,
    ndcg_at_k_lists,
    recall_at_k,
)

__all__ = [
    "auc",
    "coverage",
    "expected_calibration_error",
    "gauc",
    "hit_rate_at_k",
    "impression_metrics",
    "mrr",
    "ndcg_at_k",
    "ndcg_at_k_lists",
    "recall_at_k",
]
