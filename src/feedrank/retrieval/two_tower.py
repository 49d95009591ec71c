"""The two-tower retrieval model.

Item tower: hashed item id + category + subcategory + hashed creator + hashed title
bag-of-words -> MLP -> L2-normalised vector. An item never seen in training still gets a
useful vector from its content and metadata (the id row is then near its init).

User tower: the user's recent history (item id and category embeddings shared with the
item tower, pooled with learned recency weights), category affinities and context (hour,
weekday) -> MLP -> L2-normalised vector. There is no user-id table: a billion users cost
nothing here, and a user with no history gets a vector from context alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

N_CONTEXT = 4  # sin/cos hour of day, sin/cos weekday


@dataclass(frozen=True)
class TwoTowerDims:
    id_buckets: int
    text_buckets: int
    n_categories: int
    n_subcategories: int
    embed_dim: int
    out_dim: int
    history_len: int


class ItemTower(nn.Module):
    def __init__(self, d: TwoTowerDims, id_emb: nn.Embedding, cat_emb: nn.Embedding) -> None:
        super().__init__()
        self.id_emb = id_emb
        self.cat_emb = cat_emb
        self.sub_emb = nn.Embedding(d.n_subcategories, d.embed_dim)
        self.creator_emb = nn.Embedding(d.id_buckets, d.embed_dim, padding_idx=0, sparse=True)
        self.text = nn.EmbeddingBag(d.text_buckets, d.embed_dim, mode="mean", padding_idx=0, sparse=True)
        self.mlp = nn.Sequential(nn.Linear(5 * d.embed_dim, 2 * d.out_dim), nn.ReLU(), nn.Linear(2 * d.out_dim, d.out_dim))

    def forward(
        self,
        id_hash: torch.Tensor,
        cat: torch.Tensor,
        sub: torch.Tensor,
        creator: torch.Tensor,
        text_tokens: torch.Tensor,
        text_offsets: torch.Tensor,
    ) -> torch.Tensor:
        """Inputs (B,) int64 (+ EmbeddingBag tokens/offsets). Returns (B, out_dim) float32, unit norm."""
        x = torch.cat(
            [
                self.id_emb(id_hash),
                self.cat_emb(cat),
                self.sub_emb(sub),
                self.creator_emb(creator),
                self.text(text_tokens, text_offsets),
            ],
            dim=-1,
        )
        return F.normalize(self.mlp(x), dim=-1)


class UserTower(nn.Module):
    def __init__(self, d: TwoTowerDims, id_emb: nn.Embedding, cat_emb: nn.Embedding) -> None:
        super().__init__()
        self.id_emb = id_emb
        self.cat_emb = cat_emb
        self.recency = nn.Parameter(torch.zeros(d.history_len))
        in_dim = 2 * d.embed_dim + d.n_categories + N_CONTEXT + 1
        self.mlp = nn.Sequential(nn.Linear(in_dim, 2 * d.out_dim), nn.ReLU(), nn.Linear(2 * d.out_dim, d.out_dim))

    def forward(self, hist_id: torch.Tensor, hist_cat: torch.Tensor, affinity: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """hist_id/hist_cat (B, L) int64 with 0 = padding (most recent last); affinity
        (B, C) float32; context (B, 4) float32. Returns (B, out_dim) float32, unit norm."""
        mask = (hist_id > 0).float()
        w = torch.softmax(self.recency, dim=0)[None, :] * mask
        denom = w.sum(dim=1, keepdim=True).clamp_min(1e-6)
        pooled_id = (self.id_emb(hist_id) * w[..., None]).sum(1) / denom
        pooled_cat = (self.cat_emb(hist_cat) * w[..., None]).sum(1) / denom
        n_hist = torch.log1p(mask.sum(1, keepdim=True))
        x = torch.cat([pooled_id, pooled_cat, affinity, context, n_hist], dim=-1)
        return F.normalize(self.mlp(x), dim=-1)


class TwoTower(nn.Module):
    """Both towers sharing the item-id and category tables.

    The hashed tables (item id, creator, title words) have sparse gradients: a step
    touches only the rows in the batch, so training cost does not grow with table size.
    """

    def __init__(self, dims: TwoTowerDims) -> None:
        super().__init__()
        self.dims = dims
        id_emb = nn.Embedding(dims.id_buckets, dims.embed_dim, padding_idx=0, sparse=True)
        cat_emb = nn.Embedding(dims.n_categories, dims.embed_dim)
        nn.init.normal_(id_emb.weight, std=0.05)
        with torch.no_grad():
            id_emb.weight[0].zero_()
        self.item = ItemTower(dims, id_emb, cat_emb)
        self.user = UserTower(dims, id_emb, cat_emb)


    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.item.id_emb.weight, self.item.creator_emb.weight, self.item.text.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]


def build_two_tower(dims: TwoTowerDims) -> TwoTower:
    return TwoTower(dims)


def context_features(ts: torch.Tensor) -> torch.Tensor:
    """(B,) float64 epoch seconds (UTC) -> (B, 4) float32 [sin, cos hour; sin, cos weekday]."""
    hours = torch.remainder(ts / 3600.0, 24.0)
    days = torch.remainder(ts / 86400.0 + 3.0, 7.0)  # 1970-01-01 was a Thursday
    two_pi = 2 * torch.pi
    return torch.stack(
        [torch.sin(two_pi * hours / 24), torch.cos(two_pi * hours / 24), torch.sin(two_pi * days / 7), torch.cos(two_pi * days / 7)],
        dim=-1,
    ).float()
