"""Ranking losses over a batch of whole impressions (groups), and the fairness term.

Every function takes ``scores`` (B,) float logits, ``labels`` (B,) float {0, 1} and
``groups`` (B,) int64 local group ids in ``0..G-1`` (rows of one impression share an id).

* ``pointwise``: binary cross-entropy per row;
* ``pairwise``: RankNet / BPR, ``softplus(-(s_pos - s_neg))`` over every (clicked,
  not clicked) pair inside an impression;
* ``listwise``: softmax cross-entropy over each impression (ListNet with the clicked items
  as the target distribution), impressions without a click skipped;
* ``exposure_gap``: the fairness regulariser, the gap in DCG exposure between creator
  groups at soft ranks (the measure itself, made differentiable); see its docstring.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossName = Literal["pointwise", "pairwise", "listwise"]
LOSSES: tuple[str, ...] = ("pointwise", "pairwise", "listwise")


def _segment_logsumexp(scores: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(G,) log sum exp of the scores of each group."""
    mx = torch.full((n_groups,), -1e30, dtype=scores.dtype).scatter_reduce(0, groups, scores.detach(), "amax")
    ex = torch.zeros(n_groups, dtype=scores.dtype).index_add(0, groups, torch.exp(scores - mx[groups]))
    return torch.log(ex.clamp_min(1e-30)) + mx


def pointwise_loss(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(scores, labels)


def pairwise_loss(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean RankNet loss over in-impression (positive, negative) pairs; 0 if none."""
    pos = torch.nonzero(labels > 0.5).squeeze(-1)
    if len(pos) == 0:
        return scores.sum() * 0.0
    same = groups[pos][:, None] == groups[None, :]              # (P, B)
    neg = same & (labels[None, :] < 0.5)
    if not bool(neg.any()):
        return scores.sum() * 0.0
    diff = scores[pos][:, None] - scores[None, :]                # (P, B)
    return F.softplus(-diff[neg]).mean()


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy per impression, averaged over impressions with a click."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    n_pos = torch.zeros(n_groups, dtype=scores.dtype).index_add(0, groups, labels)
    has = n_pos > 0
    if not bool(has.any()):
        return scores.sum() * 0.0
    lse = _segment_logsumexp(scores, groups, n_groups)
    ll = torch.zeros(n_groups, dtype=scores.dtype).index_add(0, groups, labels * (scores - lse[groups]))
    return -(ll[has] / n_pos[has]).mean()


def ranking_loss(name: str, scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Dispatch by name (``LOSSES``)."""
    if name == "pointwise":
        return pointwise_loss(scores, labels, groups)
    if name == "pairwise":
        return pairwise_loss(scores, labels, groups)
    if name == "listwise":
        return listwise_loss(scores, labels, groups)
    raise ValueError(f"unknown ranking loss {name!r} (one of {', '.join(LOSSES)})")


def soft_ranks(scores: torch.Tensor, groups: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B,) differentiable 1-based rank of each row inside its group:
    ``1 + sum_{j != i, same group} sigmoid((s_j - s_i) / temperature)`` (the exact rank as
    temperature -> 0). Uses a (B, B) same-group mask: batches of ~1k rows."""
    same = groups[:, None] == groups[None, :]
    same.fill_diagonal_(False)
    beats = torch.sigmoid((scores[None, :] - scores[:, None]) / temperature)  # [i, j]: j ranked above i
    return 1.0 + (beats * same).sum(dim=1)


def exposure_gap(scores: torch.Tensor, groups: torch.Tensor, protected: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """Fairness regulariser: squared relative gap in mean expected exposure per item between
    protected rows (``protected`` (B,) bool, e.g. new creators) and the others.

    Exposure is the measure's own DCG weight ``1 / log2(1 + r)`` at each row's soft rank
    inside its impression (``soft_ranks``), so the penalty and the reported disparity
    (``fairness.exposure_disparity``) agree; the penalty is
    ``((mean exposure of protected - mean exposure of others) / mean exposure) ** 2``, 0 when
    the batch lacks one of the two groups. Differentiable in ``scores``."""
    p = protected.bool()
    if not bool(p.any()) or bool(p.all()):
        return scores.sum() * 0.0
    expo = 1.0 / torch.log2(1.0 + soft_ranks(scores, groups, temperature))
    gap = expo[p].mean() - expo[~p].mean()
    return (gap / expo.mean().clamp_min(1e-6)) ** 2
