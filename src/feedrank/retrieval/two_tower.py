"""The two-tower retrieval model.

Item tower: hashed item id + category + subcategory + hashed creator + hashed title
bag-of-words + a frozen content vector of the title (MiniLM or hashed, see
``features/content.py``) -> MLP -> L2-normalised vector. An item never seen in training
still gets a useful vector from its content and metadata (its id row stays near zero; in
training a share ``id_dropout`` of the items is encoded without its id row, so the tower
learns such vectors: ``retrieval.id_dropout``).

User tower: the item-tower vectors of the user's recent clicks, pooled with learned
recency weights plus a content-based attention score, then a residual MLP over the pooled
vector, pooled categories, category affinities and context (hour, weekday). There is no
user-id table: a billion users cost nothing here, and a user with no history gets a vector
from context alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
    content_dim: int = 0  # 0: no content vector input
    # prior terms added to the training logit ("category,popularity,age"; "": none), each
    # with a learned weight (``offset_weights``; training only: retrieval/train_offsets.py)
    offset_terms: str = ""


class ItemTower(nn.Module):
    def __init__(self, d: TwoTowerDims, id_emb: nn.Embedding, cat_emb: nn.Embedding) -> None:
        super().__init__()
        self.id_emb = id_emb
        self.cat_emb = cat_emb
        self.sub_emb = nn.Embedding(d.n_subcategories, d.embed_dim)
        self.creator_emb = nn.Embedding(d.id_buckets, d.embed_dim, padding_idx=0, sparse=True)
        self.text = nn.EmbeddingBag(d.text_buckets, d.embed_dim, mode="mean", padding_idx=0, sparse=True)
        self.content = nn.Linear(d.content_dim, d.embed_dim) if d.content_dim else None
        n_in = 5 + (1 if d.content_dim else 0)
        # training only: the share of item occurrences whose id row is dropped (as for an item
        # never trained on), so the tower learns vectors from metadata alone (cold items)
        self.id_dropout = 0.0
        self.mlp = nn.Sequential(nn.Linear(n_in * d.embed_dim, 2 * d.out_dim), nn.ReLU(), nn.Linear(2 * d.out_dim, d.out_dim))

    def forward(
        self,
        id_hash: torch.Tensor,
        cat: torch.Tensor,
        sub: torch.Tensor,
        creator: torch.Tensor,
        text_tokens: torch.Tensor,
        text_offsets: torch.Tensor,
        content: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Inputs (B,) int64, EmbeddingBag tokens (T,)/offsets (B,), content (B, Dc) float32.
        Returns (B, out_dim) float32, unit norm."""
        if self.training and self.id_dropout > 0:
            id_hash = id_hash * (torch.rand(id_hash.shape) >= self.id_dropout).to(id_hash.dtype)  # row 0: zero vector
        parts = [self.id_emb(id_hash), self.cat_emb(cat), self.sub_emb(sub), self.creator_emb(creator),
                 self.text(text_tokens, text_offsets)]
        if self.content is not None:
            assert content is not None, "this item tower needs content vectors"
            parts.append(self.content(content))
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)


class UserTower(nn.Module):
    def __init__(self, d: TwoTowerDims, cat_emb: nn.Embedding) -> None:
        super().__init__()
        self.cat_emb = cat_emb
        self.recency = nn.Parameter(torch.zeros(d.history_len))
        self.attn = nn.Linear(d.out_dim, 1)
        in_dim = d.out_dim + d.embed_dim + d.n_categories + N_CONTEXT + 1
        self.mlp = nn.Sequential(nn.Linear(in_dim, 2 * d.out_dim), nn.ReLU(), nn.Linear(2 * d.out_dim, d.out_dim))
        self.skip = nn.Parameter(torch.tensor(1.0))

    def forward(self, hist_vec: torch.Tensor, hist_cat: torch.Tensor, affinity: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """hist_vec (B, L, D) item-tower vectors of the history (zeros = padding, most recent
        last); hist_cat (B, L) int64 (0 = padding); affinity (B, C); context (B, 4).
        Returns (B, out_dim) float32, unit norm."""
        mask = hist_cat.new_zeros(hist_cat.shape, dtype=torch.bool) | (hist_vec.abs().sum(-1) > 0)
        logits = self.recency[None, -hist_vec.shape[1]:] + self.attn(hist_vec).squeeze(-1)
        w = torch.softmax(logits.masked_fill(~mask, -1e9), dim=1) * mask.float()
        pooled = (hist_vec * w[..., None]).sum(1)
        pooled_cat = (self.cat_emb(hist_cat) * w[..., None]).sum(1)
        n_hist = torch.log1p(mask.float().sum(1, keepdim=True))
        x = torch.cat([pooled, pooled_cat, affinity, context, n_hist], dim=-1)
        return F.normalize(self.skip * pooled + self.mlp(x), dim=-1)


class TwoTower(nn.Module):
    """Both towers sharing the category table; the user tower reads item-tower vectors.

    The hashed tables (item id, creator, title words) have sparse gradients: a step
    touches only the rows in the batch, so training cost does not grow with table size.
    ``content`` (N, Dc) float32 is the frozen content table by catalogue row; it is not
    part of the state_dict (bundles store it as ``item_content.npy``).
    """

    def __init__(self, dims: TwoTowerDims) -> None:
        super().__init__()
        self.dims = dims
        id_emb = nn.Embedding(dims.id_buckets, dims.embed_dim, padding_idx=0, sparse=True)
        cat_emb = nn.Embedding(dims.n_categories, dims.embed_dim)
        nn.init.normal_(id_emb.weight, std=0.01)
        with torch.no_grad():
            id_emb.weight[0].zero_()
        self.item = ItemTower(dims, id_emb, cat_emb)
        self.user = UserTower(dims, cat_emb)
        self.content: torch.Tensor = torch.zeros((0, max(dims.content_dim, 1)), dtype=torch.float32)
        n_off = len([t for t in dims.offset_terms.split(",") if t])
        # the weights of the training logit's offsets; not used to encode users or items
        self.offset_weights = nn.Parameter(torch.zeros(n_off)) if n_off else None

    def set_content(self, content: np.ndarray | None) -> None:
        """Attach the (N, Dc) content table (rows = catalogue indices)."""
        if content is None or not self.dims.content_dim:
            self.content = torch.zeros((0, max(self.dims.content_dim, 1)), dtype=torch.float32)
            return
        if content.shape[1] != self.dims.content_dim:
            raise ValueError(f"content vectors are {content.shape[1]}-d, the model expects {self.dims.content_dim}")
        self.content = torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32))

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
