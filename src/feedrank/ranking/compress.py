"""Compressed rankers and the latency-budget policy that picks between them.

* ``quantize_int8(model)``: torch dynamic quantization (``nn.Linear`` weights int8,
  activations quantized per batch on the fly); built at load time from the full weights,
  so the bundle stores no extra file for it.
* The distilled ranker is trained in ``train.train_distilled`` and stored as
  ``ranker_small.pt``.
* ``RankBudget``: per variant a linear cost model ``ms(n) = a + b * n`` measured on this
  machine (``measure_cost``); ``choose(budget_ms, n)`` returns the best variant (in
  quality order full > int8 > distilled) that scores all ``n`` candidates within the
  budget, else the cheapest variant with as many candidates as fit (at least ``min_n``).
"""

from __future__ import annotations

import copy
import gc
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

VARIANT_ORDER = ("full", "int8", "distilled")


class FusedMLP(nn.Module):
    """A one-hidden-layer MLP ranker folded for serving: normalisation goes into the first
    layer's weights, the category embedding into a per-category bias table and the
    position-0 term into the output bias, so a forward is clamp + index + addmm + relu + addmv.

    Same outputs as the source ``Ranker`` at the serving position (float rounding aside)."""

    def __init__(self, ranker: nn.Module) -> None:
        super().__init__()
        lin = [m for m in ranker.mlp if isinstance(m, nn.Linear)]
        if ranker.interaction != "mlp" or len(lin) != 1:
            raise ValueError("FusedMLP folds an mlp ranker with one hidden layer")
        f = ranker.n_features
        with torch.no_grad():
            w = lin[0].weight
            wd = w[:, :f] / ranker.std
            self.register_buffer("w1", wd.t().contiguous())                                        # (F, H)
            self.register_buffer("lo", ranker.mean - 8.0 * ranker.std)   # the Ranker's input clamp
            self.register_buffer("hi", ranker.mean + 8.0 * ranker.std)
            bias = lin[0].bias - (w[:, :f] * (ranker.mean / ranker.std)).sum(1)
            self.register_buffer("cat_bias", ranker.cat_emb.weight @ w[:, f:].t() + bias)        # (C, H)
            self.register_buffer("w_click", ranker.head_click.weight[0].clone())                 # (H,)
            self.register_buffer("b_click", ranker.head_click.bias + ranker.position_bias.weight[0])
            self.register_buffer("w_dwell", ranker.head_dwell.weight[0].clone())
            self.register_buffer("b_dwell", ranker.head_dwell.bias.clone())
        self.n_features = f

    def _hidden(self, dense: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        if dense.shape[-1] != self.n_features:  # features added after the ranker was trained
            dense = dense[..., : self.n_features]
        return torch.relu(torch.addmm(self.cat_bias[category], torch.clamp(dense, self.lo, self.hi), self.w1))

    def forward(self, dense: torch.Tensor, category: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """dense (B, F), category (B,) -> (B,) click logits at position 0."""
        return torch.addmv(self.b_click, self._hidden(dense, category), self.w_click)

    def heads(self, dense: torch.Tensor, category: torch.Tensor,
              position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._hidden(dense, category)
        return torch.addmv(self.b_click, h, self.w_click), torch.addmv(self.b_dwell, h, self.w_dwell)


def serving_form(model: nn.Module) -> nn.Module:
    """The fastest equivalent module for serving (``FusedMLP`` where it applies)."""
    try:
        return FusedMLP(model).eval()
    except (ValueError, AttributeError):
        return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """An int8 dynamically quantized copy of ``model`` (same forward signature)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        q = quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
    q.eval()
    return q


def time_scoring(model, dense: np.ndarray, category: np.ndarray, reps: int = 50, warmup: int = 5,
                 clock: str = "wall") -> np.ndarray:
    """(reps,) float64 milliseconds to score one request of ``len(dense)`` candidates
    (batch 1: one forward over all candidates, numpy in, numpy out).

    ``model`` is a torch module (called as ``model(dense, category)``) or a numpy form with a
    ``logits(dense, category)`` method (``runtime.NumpyRanker``, what serving runs). The
    garbage collector is paused while timing (as ``timeit`` does), so a collection that
    other code triggered does not land in one variant's tail and not another's.

    ``clock="cpu"`` times this thread's CPU time instead of wall time: on a machine shared
    with other jobs it leaves out the time the thread waited to be scheduled (wall-clock
    tails there are mostly the other jobs), though not their cache and memory traffic."""
    d = np.ascontiguousarray(dense, dtype=np.float32)
    c = np.asarray(category, dtype=np.int64)
    if isinstance(model, nn.Module):
        call = lambda: model(torch.from_numpy(d), torch.from_numpy(c)).numpy()  # noqa: E731
    else:
        call = lambda: model.logits(d, c)  # noqa: E731
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.thread_time
    out = np.zeros(reps)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.inference_mode():
            for r in range(warmup + reps):
                t = now()
                call()
                if r >= warmup:
                    out[r - warmup] = (now() - t) * 1000.0
    finally:
        if was_enabled:
            gc.enable()
    return out


@dataclass
class CostModel:
    """``ms(n) = a_ms + b_ms * n`` at the p90 of repeated timings."""

    a_ms: float
    b_ms: float

    def predict(self, n: int) -> float:
        return self.a_ms + self.b_ms * n


def measure_cost(model: nn.Module, dense: np.ndarray, category: np.ndarray, sizes: tuple[int, int] = (50, 500),
                 reps: int = 15) -> CostModel:
    """Fit the cost model from timings at two batch sizes (rows of ``dense`` repeated as needed)."""
    ms = []
    for n in sizes:
        idx = np.arange(n) % max(len(dense), 1)
        ms.append(float(np.percentile(time_scoring(model, dense[idx], category[idx], reps=reps, warmup=2), 90)))
    b = max((ms[1] - ms[0]) / (sizes[1] - sizes[0]), 1e-6)
    return CostModel(max(ms[0] - b * sizes[0], 0.0), b)


@dataclass
class RankBudget:
    """Chooses (variant, number of candidates) to fit a ranking-stage budget."""

    costs: dict[str, CostModel] = field(default_factory=dict)
    min_n: int = 50

    def choose(self, budget_ms: float, n: int) -> tuple[str, int]:
        """Returns (variant name, candidates to rank: the first ``m <= n``)."""
        avail = [v for v in VARIANT_ORDER if v in self.costs]
        if not avail or budget_ms <= 0:
            return (avail[0] if avail else "full"), n
        for v in avail:
            if self.costs[v].predict(n) <= budget_ms:
                return v, n
        cheapest = min(avail, key=lambda v: self.costs[v].predict(n))
        c = self.costs[cheapest]
        fit = int((budget_ms - c.a_ms) / c.b_ms) if c.b_ms > 0 else n
        return cheapest, int(min(n, max(self.min_n, fit)))
