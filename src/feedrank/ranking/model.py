"""The ranker: a multi-task network over normalised dense features and a category
embedding, with explicit feature interactions, plus a position-bias term used in
training only.

    x0 = [(dense - mean) / std, cat_emb(category)]                 (B, D0)
    interaction "dcn":  x_{l+1} = x0 * (W_l x_l + b_l) + x_l        DCN-v2 cross layers,
                        parallel form: the MLP reads [x0, x_L]
                "dot":  DLRM-style: every feature f gets a field vector v_f * x_f (and the
                        category its embedding); all pairwise dot products join x0
                "mlp":  none (the foundation ranker)
    h = MLP(interaction output)                                      (B, H)
    click logit  = head_click(h) + b(position)                      (B,)
    log dwell    = head_dwell(h)   E[log1p(dwell_s) | click]        (B,)

At serving the position is fixed (``position=None`` means position 0 for every
candidate), so the ordering depends on relevance alone: the position term soaks up the
examination bias of the logged feeds. ``forward`` returns the click logit (what every
loss and ``score`` use); ``heads`` returns both outputs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from feedrank.ranking.features import N_FEATURES, N_POSITIONS

Interaction = Literal["dcn", "dot", "mlp"]
CAT_DIM = 8


class CrossNet(nn.Module):
    """DCN-v2 cross layers (full-rank): ``x_{l+1} = x0 * (W x_l + b) + x_l``. (B, D) -> (B, D)."""

    def __init__(self, dim: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=0.3 / dim**0.5)
            nn.init.zeros_(layer.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class DotInteraction(nn.Module):
    """DLRM-style pairwise dot products between field vectors.

    Dense feature f becomes ``v_f * x_f`` (v_f (E,) learned), the category its embedding;
    returns the upper triangle of the (F+1, F+1) Gram matrix: (B, (F+1) F / 2)."""

    def __init__(self, n_features: int, dim: int) -> None:
        super().__init__()
        self.field = nn.Parameter(torch.randn(n_features, dim) * 0.1)
        n = n_features + 1
        iu = torch.triu_indices(n, n, offset=1)
        self.register_buffer("iu0", iu[0], persistent=False)
        self.register_buffer("iu1", iu[1], persistent=False)
        self.out_dim = n * (n - 1) // 2

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        fields = torch.cat([dense.unsqueeze(-1) * self.field, cat.unsqueeze(1)], dim=1)  # (B, F+1, E)
        gram = torch.bmm(fields, fields.transpose(1, 2))                                  # (B, F+1, F+1)
        return gram[:, self.iu0, self.iu1]


class Ranker(nn.Module):
    def __init__(self, n_categories: int, hidden: tuple[int, ...] = (64, 32), n_features: int = N_FEATURES,
                 interaction: Interaction = "mlp", cross_layers: int = 2) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_categories = n_categories
        self.hidden = tuple(hidden)
        self.interaction = interaction
        self.cross_layers = cross_layers
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.cat_emb = nn.Embedding(n_categories, CAT_DIM)
        d = n_features + CAT_DIM
        self.cross: CrossNet | None = None
        self.dot: DotInteraction | None = None
        if interaction == "dcn":
            self.cross = CrossNet(d, cross_layers)
            d *= 2
        elif interaction == "dot":
            self.dot = DotInteraction(n_features, CAT_DIM)
            d += self.dot.out_dim
        elif interaction != "mlp":
            raise ValueError(f"unknown interaction {interaction!r} (dcn | dot | mlp)")
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.mlp = nn.Sequential(*layers)
        self.head_click = nn.Linear(d, 1)
        self.head_dwell = nn.Linear(d, 1)
        self.position_bias = nn.Embedding(N_POSITIONS, 1)
        nn.init.zeros_(self.position_bias.weight)

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(std.clamp_min(1e-6))

    def describe(self) -> dict:
        """JSON-ready constructor arguments (what the bundle stores to rebuild it)."""
        return {"n_categories": self.n_categories, "hidden": list(self.hidden), "n_features": self.n_features,
                "interaction": self.interaction, "cross_layers": self.cross_layers}

    def trunk(self, dense: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """dense (B, F') float32 with F' >= F (columns past the model's own F, features added
        after it was trained, are ignored), category (B,) int64 -> (B, H) shared representation."""
        if dense.shape[-1] != self.n_features:
            dense = dense[..., : self.n_features]
        z = ((dense - self.mean) / self.std).clamp(-8.0, 8.0)  # out-of-range inputs cannot dominate
        c = self.cat_emb(category)
        x = torch.cat([z, c], dim=-1)
        if self.cross is not None:
            x = torch.cat([x, self.cross(x)], dim=-1)
        elif self.dot is not None:
            x = torch.cat([x, self.dot(z, c)], dim=-1)
        return self.mlp(x)

    def _position_term(self, position: torch.Tensor | None) -> torch.Tensor:
        if position is None:
            return self.position_bias.weight[0, 0]
        return self.position_bias(position.clamp(0, N_POSITIONS - 1)).squeeze(-1)

    def heads(self, dense: torch.Tensor, category: torch.Tensor,
              position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (click logit (B,), predicted log1p(dwell seconds) given a click (B,))."""
        h = self.trunk(dense, category)
        return self.head_click(h).squeeze(-1) + self._position_term(position), self.head_dwell(h).squeeze(-1)

    def forward(self, dense: torch.Tensor, category: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """dense (B, F) float32, category (B,) int64, position (B,) int64 or None.
        Returns (B,) float32 click logits."""
        return self.head_click(self.trunk(dense, category)).squeeze(-1) + self._position_term(position)


def build_ranker(n_categories: int, hidden: tuple[int, ...], interaction: Interaction = "mlp",
                 cross_layers: int = 2, n_features: int = N_FEATURES) -> Ranker:
    return Ranker(n_categories=n_categories, hidden=hidden, n_features=n_features, interaction=interaction,
                  cross_layers=cross_layers)


def ranker_from_description(desc: dict) -> Ranker:
    """Rebuild an (untrained) ranker from ``Ranker.describe()`` (older bundles: mlp)."""
    return Ranker(n_categories=int(desc["n_categories"]), hidden=tuple(desc["hidden"]),
                  n_features=int(desc.get("n_features", N_FEATURES)), interaction=desc.get("interaction", "mlp"),
                  cross_layers=int(desc.get("cross_layers", 2)))


@torch.no_grad()
def logits(model: nn.Module, dense: np.ndarray, category: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """(N,) float32 click logits at the serving position (position fixed)."""
    model.eval()
    out = np.zeros(len(dense), dtype=np.float32)
    for s in range(0, len(dense), batch_size):
        d = torch.from_numpy(np.ascontiguousarray(dense[s : s + batch_size], dtype=np.float32))
        c = torch.from_numpy(np.asarray(category[s : s + batch_size]).astype(np.int64))
        out[s : s + len(d)] = model(d, c).numpy()
    return out


@torch.no_grad()
def score(model: nn.Module, dense: np.ndarray, category: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """(N,) float32 click probabilities at the serving position (position fixed)."""
    return (1.0 / (1.0 + np.exp(-logits(model, dense, category, batch_size).astype(np.float64)))).astype(np.float32)


@torch.no_grad()
def predict_heads(model: Ranker, dense: np.ndarray, category: np.ndarray, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """((N,) click logits, (N,) predicted log1p(dwell s)) at the serving position."""
    model.eval()
    lo = np.zeros(len(dense), dtype=np.float32)
    dw = np.zeros(len(dense), dtype=np.float32)
    for s in range(0, len(dense), batch_size):
        d = torch.from_numpy(np.ascontiguousarray(dense[s : s + batch_size], dtype=np.float32))
        c = torch.from_numpy(np.asarray(category[s : s + batch_size]).astype(np.int64))
        a, b = model.heads(d, c)
        lo[s : s + len(d)] = a.numpy()
        dw[s : s + len(d)] = b.numpy()
    return lo, dw


@torch.no_grad()
def implied_examination(model: Ranker, dense: np.ndarray, category: np.ndarray, n_positions: int = 10) -> np.ndarray:
    """(n_positions,) the click-rate ratio the model predicts for slot k vs slot 0 over the
    given rows: ``mean sigmoid(f + b_k) / mean sigmoid(f + b_0)`` (the examination curve of a
    position-based click model, as learned by the training-only position term)."""
    z = torch.from_numpy(logits(model, dense, category)) - model.position_bias.weight[0, 0]
    b = model.position_bias.weight[:n_positions, 0]
    p = torch.sigmoid(z[None, :] + b[:, None]).mean(dim=1)
    return (p / p[0]).numpy()
