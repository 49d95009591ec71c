"""Offline metrics: pure functions of arrays (no I/O, no clock), vectorised.

Three families, all defined in ``docs/metrics.md``:

* scored rows (one row = one shown item): ``auc``, ``gauc``, ``expected_calibration_error``;
* impressions (rows grouped by a request/impression id): ``mrr``, ``ndcg_at_k`` and the
  MIND-style bundle ``impression_metrics``;
* ranked lists (retrieval): ``recall_at_k``, ``ndcg_at_k_lists``, ``hit_rate_at_k``,
  ``coverage``.

Every grouped metric works by sorting once (``np.lexsort`` on ``(group, score)``) and
reducing with ``np.bincount``; nothing loops over groups in Python, so millions of rows
take about a second. Group ids may be any hashable values (ints, strings); they are
factorised with ``pandas.factorize`` (hashing, O(n)).

Conventions:

* ``labels`` are binary: bool, or numbers that are all 0 or 1. Anything else, a NaN score,
  mismatched lengths or empty input raise ``SchemaError`` with a message naming the field.
* Averages are taken over the groups (users) for which the metric is defined; when there
  are none the result is ``nan`` (never an exception), so a caller can report "n/a".
* Ranking ties (equal scores inside one group) are broken by input order: the earlier row
  ranks higher. AUC instead counts a tied positive/negative pair as half a win.

Modules: ``scored`` (rows, impressions, ECE), ``lists`` (ranked lists), ``beyond``
(debiased and beyond-accuracy); ``_inputs`` validates. Import from this package.
"""

from __future__ import annotations

from feedrank.evaluation.metrics.beyond import (
    calibration_curve,
    gini,
    intra_list_diversity,
    lorenz_curve,
    ndcg_at_k_weighted,
    novelty,
    weighted_auc,
)
from feedrank.evaluation.metrics.lists import coverage, hit_rate_at_k, ndcg_at_k_lists, recall_at_k
from feedrank.evaluation.metrics.scored import auc, expected_calibration_error, gauc, impression_metrics, mrr, ndcg_at_k

__all__ = [
    "auc",
    "gauc",
    "mrr",
    "ndcg_at_k",
    "impression_metrics",
    "recall_at_k",
    "ndcg_at_k_lists",
    "hit_rate_at_k",
    "coverage",
    "expected_calibration_error",
    "weighted_auc",
    "ndcg_at_k_weighted",
    "calibration_curve",
    "gini",
    "lorenz_curve",
    "intra_list_diversity",
    "novelty",
]
