"""``torch.optim.SparseAdam`` with the same arithmetic, done with row gathers and row adds.

    opt = RowSparseAdam(model.sparse_parameters(), lr=3e-3)   # drop-in for torch.optim.SparseAdam

torch's ``SparseAdam`` reads the moments of a step's rows with ``dense.sparse_mask(grad)``
and writes every update (first moment, second moment, weights) by adding a freshly built
sparse COO tensor to the dense one, each of which validates and walks its indices again.
On the two-tower's hashed tables (262,144 x 32, a few thousand rows per step) that
bookkeeping costs more than the arithmetic (docs/training-at-scale.md).

Here the step's gradient is coalesced once (``grad.coalesce()``, as torch does: the update
is non-linear, so duplicate rows are summed first), and then, for its unique rows ``idx``:

    m_old = exp_avg[idx];      upd_m = (g - m_old) * (1 - beta1);      exp_avg[idx] += upd_m
    v_old = exp_avg_sq[idx];   upd_v = (g*g - v_old) * (1 - beta2);    exp_avg_sq[idx] += upd_v
    param[idx] += -step_size * ((upd_m + m_old) / (sqrt(upd_v + v_old) + eps))

the same operations on the same values in the same order as torch's ``_functional.sparse_adam``
(``dense.add_(sparse)`` with unique indices adds each row once), so the result is the same
bits (``tests/unit/training/test_sparse_adam.py`` checks this against ``torch.optim.SparseAdam``).
The state (``step``, ``exp_avg``, ``exp_avg_sq``) and ``state_dict`` are SparseAdam's, so
checkpoints move freely between the two.
"""

from __future__ import annotations

import math

import torch


class RowSparseAdam(torch.optim.SparseAdam):
    """SparseAdam (same hyper-parameters, state and results) with row-indexed updates.

    Parameters must be 2-D (rows, dim) with sparse gradients (``nn.Embedding(sparse=True)``,
    ``nn.EmbeddingBag(sparse=True)``); ``maximize`` is supported as in SparseAdam."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 maximize: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, maximize=maximize)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowSparseAdam takes 2-D (rows, dim) parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps, lr = group["eps"], float(group["lr"])
            maximize = group.get("maximize", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
                if p.grad.sparse_dim() != 1:
                    raise ValueError(f"RowSparseAdam takes row-sparse gradients (sparse_dim 1, as nn.Embedding's), "
                                     f"got sparse_dim {p.grad.sparse_dim()} for shape {tuple(p.shape)}")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grad = p.grad if not maximize else -p.grad
                _update_rows(p, grad.coalesce(), state["exp_avg"], state["exp_avg_sq"], state["step"],
                             lr=lr, beta1=beta1, beta2=beta2, eps=eps)
        return loss


def _update_rows(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                 step: int, *, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """One SparseAdam step for the rows of the coalesced sparse ``grad`` (in place)."""
    values = grad._values()
    if values.numel() == 0:
        return
    idx = grad._indices()[0]
    values = values.reshape(len(idx), -1)
    old_m = exp_avg.index_select(0, idx)
    upd_m = values.sub(old_m).mul_(1 - beta1)
    exp_avg.index_add_(0, idx, upd_m)
    old_v = exp_avg_sq.index_select(0, idx)
    upd_v = values.pow(2).sub_(old_v).mul_(1 - beta2)
    exp_avg_sq.index_add_(0, idx, upd_v)
    numer = upd_m.add_(old_m)
    denom = upd_v.add_(old_v).sqrt_().add_(eps)
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    param.index_add_(0, idx, -step_size * numer.div_(denom))
