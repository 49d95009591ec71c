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
        d = log_dwell - mean_log_dwell  # np.clip(d, -20, 20) without its Python-level wrapper
        out = out + dwell_weight * p_click * np.exp(np.minimum(np.maximum(d, -20.0, out=d), 20.0, out=d))
    return out


def limit_blas_threads(n: int) -> None:
    """At most ``n`` BLAS (OpenBLAS/MKL) threads in this process, as ``torch.set_num_threads``
    does for torch. The numpy scoring paths multiply one request's small matrices: OpenBLAS's
    thread pool costs far more than it saves there, and on a busy machine its spinning
    threads made the rank stage ~50x slower (measured: p50 0.3 ms -> 20 ms)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(n), user_api="blas")


class NumpyRanker:
    """A ``Ranker`` (mlp | dcn | dot) or ``FusedMLP`` exported to float32 numpy arrays at load
    time, evaluated with numpy matmuls: the same outputs as the torch module at the serving
    position (position 0) within float32 rounding, without torch's per-op dispatch cost,
    which dominates for one request's few hundred candidates. Training keeps torch.

    ``heads(dense (B, F) float32, category (B,) int64) -> (click logits (B,), log dwell (B,))``
    """

    def __init__(self, module: nn.Module) -> None:
        def arr(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)

        self.kind = type(module).__name__
        if self.kind == "FusedMLP":
            self.interaction = "fused"
            self.lo, self.hi, self.w1, self.cat_bias = arr(module.lo), arr(module.hi), arr(module.w1), arr(module.cat_bias)
            self.layers: list[tuple[np.ndarray, np.ndarray]] = []
            self.w_click, self.b_click = arr(module.w_click), float(module.b_click.reshape(-1)[0])
            self.w_dwell, self.b_dwell = arr(module.w_dwell), float(module.b_dwell.reshape(-1)[0])
            return
        if not all(hasattr(module, a) for a in ("mean", "std", "cat_emb", "mlp", "head_click", "head_dwell", "interaction")):
            raise TypeError(f"cannot export {self.kind} to numpy")
        self.interaction = module.interaction
        self.mean, self.std = arr(module.mean), arr(module.std)
        self.cat_emb = arr(module.cat_emb.weight)                                   # (C, E)
        linears = [m for m in module.mlp if isinstance(m, nn.Linear)]
        if any(not isinstance(m, (nn.Linear, nn.ReLU)) for m in module.mlp):
            raise TypeError("the ranker MLP has layers other than Linear and ReLU")
        self.layers = [(arr(m.weight).T.copy(), arr(m.bias)) for m in linears]   # (in, out), (out,)
        self.cross = [(arr(m.weight).T.copy(), arr(m.bias)) for m in module.cross.layers] if module.cross is not None else []
        self.field = arr(module.dot.field) if module.dot is not None else None     # (F, E)
        if self.field is not None:
            n = self.field.shape[0] + 1
            self.iu = np.triu_indices(n, 1)
        self.w_click, self.b_click = arr(module.head_click.weight[0]), float(module.head_click.bias.detach()[0])
        self.b_click += float(module.position_bias.weight.detach()[0, 0])                    # the serving position
        self.w_dwell, self.b_dwell = arr(module.head_dwell.weight[0]), float(module.head_dwell.bias.detach()[0])
        self.first_bias = None
        if self.interaction == "mlp" and self.layers:
            # fold the category embedding into a per-category bias of the first layer
            f = len(self.mean)
            w, b = self.layers[0]
            self.first_bias = self.cat_emb @ w[f:] + b                               # (C, H1)
            self.first_w = np.ascontiguousarray(w[:f])                               # (F, H1)

    def _trunk(self, dense: np.ndarray, category: np.ndarray) -> np.ndarray:
        if self.interaction == "fused":
            h = np.clip(dense, self.lo, self.hi) @ self.w1
            h += self.cat_bias[category]
            return np.maximum(h, 0.0, out=h)
        z = dense - self.mean  # np.clip((dense - mean) / std, -8, 8), in one buffer
        z /= self.std
        np.minimum(np.maximum(z, -8.0, out=z), 8.0, out=z)
        layers = self.layers
        if self.first_bias is not None:
            x = z @ self.first_w
            x += self.first_bias[category]
            np.maximum(x, 0.0, out=x)
            layers = layers[1:]
        else:
            c = self.cat_emb[category]
            x0 = np.concatenate([z, c], axis=1)
            if self.cross:
                x = x0
                for w, b in self.cross:
                    x = x0 * (x @ w + b) + x
                x = np.concatenate([x0, x], axis=1)
            elif self.field is not None:
                fields = np.concatenate([z[:, :, None] * self.field[None, :, :], c[:, None, :]], axis=1)  # (B, F+1, E)
                gram = np.matmul(fields, fields.transpose(0, 2, 1))
                x = np.concatenate([x0, gram[:, self.iu[0], self.iu[1]]], axis=1)
            else:
                x = x0
        for w, b in layers:
            x = x @ w
            x += b
            np.maximum(x, 0.0, out=x)
        return x

    def heads(self, dense: np.ndarray, category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = self._trunk(np.asarray(dense, dtype=np.float32), np.asarray(category, dtype=np.int64))
        return h @ self.w_click + np.float32(self.b_click), h @ self.w_dwell + np.float32(self.b_dwell)

    def logits(self, dense: np.ndarray, category: np.ndarray) -> np.ndarray:
        h = self._trunk(np.asarray(dense, dtype=np.float32), np.asarray(category, dtype=np.int64))
        return h @ self.w_click + np.float32(self.b_click)


def to_numpy(module: nn.Module) -> NumpyRanker | None:
    """The numpy form of a ranker module, or None when it has none (int8, unknown modules)."""
    try:
        return NumpyRanker(module)
    except (TypeError, AttributeError, ValueError):
        return None


class RankerRuntime:
    """Holds the ranker variants of one bundle (``full``, ``int8`` built here, ``distilled``).

    Variants with a numpy form (``NumpyRanker``, built here at load time) are scored with
    it; the others (int8) with torch."""

    def __init__(self, full: nn.Module, small: nn.Module | None = None, calibrator: Calibrator | None = None,
                 mean_log_dwell: float = 0.0) -> None:
        self.variants: dict[str, nn.Module] = {"full": full}
        try:
            self.variants["int8"] = quantize_int8(full)
        except (RuntimeError, AssertionError):  # no quantized engine on this CPU: int8 is not offered
            pass
        if small is not None:
            self.variants["distilled"] = serving_form(small)
        self.fast: dict[str, NumpyRanker] = {}
        for name, module in self.variants.items():
            fast = to_numpy(module)
            if fast is not None:
                self.fast[name] = fast
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

    def score(self, variant: str, dense: np.ndarray, category: np.ndarray, age_s: np.ndarray,
              cfg: RankingConfig) -> np.ndarray:
        """(N,) float64 final scores for dense (N, F) float32, category (N,) int64, age_s (N,).
        Only a variant without a numpy form runs torch (under ``torch.inference_mode``, entered
        here: grad mode is per thread); the numpy path skips that context's cost."""
        name = variant if variant in self.variants else "full"
        fast = self.fast.get(name)
        if fast is not None:
            if cfg.dwell_weight > 0:
                z32, ld32 = fast.heads(dense, category)
                z, ld = z32.astype(np.float64), ld32.astype(np.float64)
            else:
                z, ld = fast.logits(dense, category).astype(np.float64), None
            s = blend(self.calibrator.apply(z), ld, self.mean_log_dwell, cfg.click_weight, cfg.dwell_weight)
            return freshness(s, age_s, cfg.freshness_tau_hours)
        model = self.variants[name]
        d = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
        c = torch.from_numpy(np.asarray(category, dtype=np.int64))
        with torch.inference_mode():
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
