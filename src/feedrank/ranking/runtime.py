"""The ranking stage at serving time: variants, budget, calibration, blending, freshness.

    rt = RankerRuntime(full, small, calibrator, mean_log_dwell=info["mean_log_dwell"])
    rt.measure(dense_sample, category_sample)               # cost models on this machine
    variant, m = rt.plan(budget_ms, n_candidates)           # what fits the budget
    scores = rt.score(variant, dense[:m], category[:m], age_s[:m], cfg.ranking)   # (m,)

Score of a candidate (all knobs are runtime settings in ``RankingConfig``; no retrain):

    p      = calibrator(click logit at position 0)               calibrated p(click)
    dwell  = exp(predicted log dwell - mean predicted log dwell)  relative expected dwell
    score  = click_weight * p + dwell_weight * p * dwell
    score *= exp(-age_hours / freshness_tau_hours)                (when tau > 0)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from feedrank.config import RankingConfig
from feedrank.ranking.calibration import Calibrator
from feedrank.ranking.compress import VARIANT_ORDER, RankBudget, measure_cost, quantize_int8, serving_form


def freshness(scores: np.ndarray, age_s: np.ndarray, tau_hours: float) -> np.ndarray:
    """(N,) ``scores * exp(-age / tau)``; unchanged when ``tau_hours`` <= 0."""
    if tau_hours <= 0:
        return scores
    return scores * np.exp(-np.maximum(np.asarray(age_s, dtype=np.float64), 0.0) / (tau_hours * 3600.0))


def blend(p_click: np.ndarray, log_dwell: np.ndarray | None, mean_log_dwell: float, click_weight: float,
          dwell_weight: float) -> np.ndarray:
    """(N,) ``click_weight * p + dwell_weight * p * exp(log_dwell - mean)``."""
    out = click_weight * p_click
    if dwell_weight > 0 and log_dwell is not None:
        out = out + dwell_weight * p_click * np.exp(np.clip(log_dwell - mean_log_dwell, -20.0, 20.0))
    return out


class RankerRuntime:
    """Holds the ranker variants of one bundle (``full``, ``int8`` built here, ``distilled``)."""

    def __init__(self, full: nn.Module, small: nn.Module | None = None, calibrator: Calibrator | None = None,
                 mean_log_dwell: float = 0.0) -> None:
        self.variants: dict[str, nn.Module] = {"full": full}
        try:
            self.variants["int8"] = quantize_int8(full)
        except (RuntimeError, AssertionError):  # no quantized engine on this CPU: int8 is not offered
            pass
        if small is not None:
            self.variants["distilled"] = serving_form(small)
        self.calibrator = calibrator or Calibrator()
        self.mean_log_dwell = float(mean_log_dwell)
        self.budget = RankBudget()

    def measure(self, dense: np.ndarray, category: np.ndarray) -> RankBudget:
        """Fit every variant's cost model on sample rows (dense (S, F), category (S,))."""
        self.budget = RankBudget({name: measure_cost(m, dense, category) for name, m in self.variants.items()})
        return self.budget

    def plan(self, budget_ms: float, n: int) -> tuple[str, int]:
        """(variant, number of candidates to rank) for a stage budget (<= 0: full, all)."""
        if budget_ms <= 0 or not self.budget.costs:
            return "full", n
        return self.budget.choose(budget_ms, n)

    @torch.inference_mode()
    def score(self, variant: str, dense: np.ndarray, category: np.ndarray, age_s: np.ndarray,
              cfg: RankingConfig) -> np.ndarray:
        """(N,) float64 final scores for dense (N, F) float32, category (N,) int64, age_s (N,)."""
        model = self.variants.get(variant, self.variants["full"])
        d = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
        c = torch.from_numpy(np.asarray(category, dtype=np.int64))
        if cfg.dwell_weight > 0:
            z_t, ld_t = model.heads(d, c)
            z, ld = z_t.numpy().astype(np.float64), ld_t.numpy().astype(np.float64)
        else:
            z, ld = model(d, c).numpy().astype(np.float64), None
        s = blend(self.calibrator.apply(z), ld, self.mean_log_dwell, cfg.click_weight, cfg.dwell_weight)
        return freshness(s, age_s, cfg.freshness_tau_hours)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v for v in VARIANT_ORDER if v in self.variants)
