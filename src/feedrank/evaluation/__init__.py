"""Evaluation: pure metrics (``metrics``), offline replay, off-policy estimators, reports.

Only ``metrics`` is re-exported here (its ``__all__``); heavier evaluation modules are
imported by path so that importing ``feedrank.evaluation`` stays cheap and pure.
"""

from feedrank.evaluation.metrics import *  # noqa: F403
from feedrank.evaluation.metrics import __all__  # noqa: F401
