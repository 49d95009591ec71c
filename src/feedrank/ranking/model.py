"""The ranker: an MLP over normalised dense features and a category embedding, plus a
position-bias term used in training only.

``logit = f(features, category) + b(position)``. At serving the position is fixed
(``position=None`` means position 0 for every candidate), so the ordering depends on
relevance alone: the position term soaks up the examination bias of the logged feeds.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from feedrank.ranking.features import N_FEATURES, N_POSITIONS


class Ranker(nn.Module):
    def __init__(self, n_categories: int, hidden: tuple[int, ...] = (64, 32), n_features: int = N_FEATURES) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_categories = n_categories
        self.hidden = tuple(hidden)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.cat_emb = nn.Embedding(n_categories, 8)
        layers: list[nn.Module] = []
        d = n_features + 8
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, 1))
        self.mlp = nn.Sequential(*layers)
        self.position_bias = nn.Embedding(N_POSITIONS, 1)
        nn.init.zeros_(self.position_bias.weight)

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(std.clamp_min(1e-6))

    def forward(self, dense: torch.Tensor, category: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """dense (B, F) float32, category (B,) int64, position (B,) int64 or None.
        Returns (B,) float32 click logits."""
        x = torch.cat([(dense - self.mean) / self.std, self.cat_emb(category)], dim=-1)
        logit = self.mlp(x).squeeze(-1)
        if position is None:
            return logit + self.position_bias.weight[0, 0]
        return logit + self.position_bias(position.clamp(0, N_POSITIONS - 1)).squeeze(-1)


def build_ranker(n_categories: int, hidden: tuple[int, ...]) -> Ranker:
    return Ranker(n_categories=n_categories, hidden=hidden)


@torch.no_grad()
def score(model: Ranker, dense: np.ndarray, category: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """(N,) float32 click probabilities at the serving position (position fixed)."""
    model.eval()
    out = np.zeros(len(dense), dtype=np.float32)
    for s in range(0, len(dense), batch_size):
        d = torch.from_numpy(np.ascontiguousarray(dense[s : s + batch_size], dtype=np.float32))
        c = torch.from_numpy(category[s : s + batch_size].astype(np.int64))
        out[s : s + len(d)] = torch.sigmoid(model(d, c)).numpy()
    return out
