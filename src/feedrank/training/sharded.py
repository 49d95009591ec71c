"""Item and creator embedding tables sharded across processes with TorchRec (optional
extra ``feedrank[scale]``; the default path never imports this module).

When the hashed item / creator tables outgrow one machine, they become one TorchRec
``EmbeddingBagCollection`` placed by ``DistributedModelParallel``: each table lives on one
rank (``table_wise``) or is split by embedding columns across ranks (``column_wise``);
lookups travel by all-to-all and the dense layers above are data-parallel. (``row_wise``
does not run on CPU with torchrec 1.8.0 + fbgemm-gpu-cpu 1.8.0.)

The model trained here is the two-tower's id part: an item vector = MLP(item row ++
creator row); a user vector = MLP(mean of the history items' rows); loss = in-batch
softmax of user . item / T. Each rank trains on its own batches.

    torchrun --standalone --nproc_per_node 2 -m feedrank.training.sharded --sharding column_wise --steps 30

Install (torchrec must come without its dependencies, or pip replaces the CPU torch):

    pip install -c constraints.txt fbgemm-gpu-cpu==1.8.0 tensordict pyre-extensions torchmetrics
    pip install --no-deps torchrec==1.8.0
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SHARDING_TYPES = ("table_wise", "column_wise")


def torchrec_available() -> tuple[bool, str]:
    """(True, "") when torchrec and fbgemm import; else (False, the reason)."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
        from torchrec.distributed.model_parallel import DistributedModelParallel  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means the extra is unusable
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


@dataclass(frozen=True)
class ShardedDims:
    item_rows: int = 4096
    creator_rows: int = 1024
    dim: int = 64  # column_wise splits a table into column blocks (32 wide here: one per rank)
    history_len: int = 5


class IdTowers(nn.Module):
    """Item and user towers over one ``EmbeddingBagCollection`` of two tables:
    ``item`` (features ``item`` and ``history``) and ``creator`` (feature ``creator``)."""

    def __init__(self, d: ShardedDims, device: torch.device) -> None:
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

        self.d = d
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="item", embedding_dim=d.dim, num_embeddings=d.item_rows,
                               feature_names=["item", "history"], pooling=PoolingType.MEAN,
                               weight_init_min=-0.1, weight_init_max=0.1),
            EmbeddingBagConfig(name="creator", embedding_dim=d.dim, num_embeddings=d.creator_rows,
                               feature_names=["creator"], pooling=PoolingType.SUM,
                               weight_init_min=-0.1, weight_init_max=0.1),
        ], device=device)
        self.item_mlp = nn.Sequential(nn.Linear(2 * d.dim, d.dim), nn.ReLU(), nn.Linear(d.dim, d.dim))
        self.user_mlp = nn.Sequential(nn.Linear(d.dim, d.dim), nn.ReLU(), nn.Linear(d.dim, d.dim))

    def forward(self, features: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """features: KeyedJaggedTensor with keys item (B x 1), creator (B x 1), history
        (B x L). Returns (user (B, D), item (B, D)) unit vectors."""
        pooled = self.ebc(features)
        item = self.item_mlp(torch.cat([pooled["item"], pooled["creator"]], dim=-1))
        user = self.user_mlp(pooled["history"])
        return F.normalize(user, dim=-1), F.normalize(item, dim=-1)


def synthetic_batch(d: ShardedDims, batch: int, rng: np.random.Generator, n_topics: int = 16) -> Any:
    """A KeyedJaggedTensor batch with planted structure: items belong to topics (item id
    mod n_topics); a user's history and clicked item share a topic; creators follow items."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    topic = rng.integers(0, n_topics, batch)
    per_topic = d.item_rows // n_topics
    item = topic + n_topics * rng.integers(0, per_topic, batch)
    hist = topic[:, None] + n_topics * rng.integers(0, per_topic, (batch, d.history_len))
    creator = item % d.creator_rows
    values = np.concatenate([item, creator, hist.ravel()]).astype(np.int64)
    lengths = np.concatenate([np.ones(batch), np.ones(batch), np.full(batch, d.history_len)]).astype(np.int32)
    return KeyedJaggedTensor.from_lengths_sync(keys=["item", "creator", "history"], values=torch.from_numpy(values),
                                               lengths=torch.from_numpy(lengths))


def shard(model: IdTowers, sharding: str, world: int) -> tuple[nn.Module, dict[str, str]]:
    """Wrap ``model`` in DistributedModelParallel under an explicit plan: ``table_wise``
    puts the item table on rank 0 and the creator table on the last rank; ``column_wise``
    splits both tables' columns evenly over all ranks. Returns (the sharded model,
    {table: sharding type used})."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan, table_wise
    from torchrec.distributed.types import ShardingPlan

    if sharding not in SHARDING_TYPES:
        raise ValueError(f"sharding must be one of {SHARDING_TYPES}, got {sharding!r} (row_wise does not run on CPU)")
    if sharding == "table_wise":
        per_table = {"item": table_wise(rank=0), "creator": table_wise(rank=world - 1)}
    else:
        if model.d.dim % world:
            raise ValueError(f"column_wise over {world} ranks needs a dim divisible by {world}, got {model.d.dim}")
        per_table = {name: column_wise(ranks=list(range(world))) for name in ("item", "creator")}
    sharder = EmbeddingBagCollectionSharder()
    module_plan = construct_module_sharding_plan(model.ebc, per_param_sharding=per_table, sharder=sharder,
                                                 local_size=world, world_size=world, device_type="cpu")
    plan = ShardingPlan({"ebc": module_plan})
    dmp = DistributedModelParallel(module=model, device=torch.device("cpu"), plan=plan, sharders=[sharder])
    return dmp, {table: ps.sharding_type for table, ps in module_plan.items()}


def train_sharded(sharding: str, steps: int, batch: int = 256, lr: float = 0.05, temperature: float = 0.1,
                  dims: ShardedDims | None = None, seed: int = 0) -> dict[str, Any]:
    """Train the sharded id towers ``steps`` steps on this rank's synthetic batches (must
    run inside an initialised gloo process group). Returns losses and the plan."""
    from feedrank.training import distributed as dist

    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    d = dims or ShardedDims()
    torch.manual_seed(seed)
    model = IdTowers(d, torch.device("meta"))
    # the tables' optimizer runs inside the sharded lookup's backward (each rank updates its
    # own shards); the dense towers use an ordinary optimizer over DDP-averaged gradients
    apply_optimizer_in_backward(torch.optim.Adagrad, model.ebc.parameters(), {"lr": lr})
    dmp, used = shard(model, sharding, dist.world_size())
    opt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                lambda params: torch.optim.Adam(params, lr=lr / 10))
    rng = np.random.default_rng([seed, dist.rank()])
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        kjt = synthetic_batch(d, batch, rng)
        user, item = dmp(kjt)
        loss = F.cross_entropy(user @ item.T / temperature, torch.arange(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(dist.all_reduce_mean([loss.item()])[0]))
    seconds = time.perf_counter() - t0
    local_rows = {}
    for name, t in dmp.state_dict().items():
        if "embedding_bags" in name and hasattr(t, "local_shards"):
            local_rows[name] = [list(s.tensor.shape) for s in t.local_shards()]
    return {"sharding": used, "losses": losses, "seconds": round(seconds, 3), "world_size": dist.world_size(),
            "rank": dist.rank(), "local_shards": local_rows,
            "examples_per_s": round(steps * batch * dist.world_size() / seconds, 1) if seconds > 0 else None}


def main(argv: list[str] | None = None) -> None:
    from feedrank.training import distributed as dist

    ap = argparse.ArgumentParser(prog="python -m feedrank.training.sharded",
                                 description="Train item/creator tables sharded with TorchRec (run under torchrun).")
    ap.add_argument("--sharding", default="table_wise",
                    help="table_wise, column_wise, or both comma-separated (run one after the other)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default="", help="folder: each rank writes <sharding>-rank<R>.json there")
    a = ap.parse_args(argv)
    ok, why = torchrec_available()
    if not ok:
        raise SystemExit(f"torchrec is not usable ({why}); install the extra: see docs/training-at-scale.md")
    torch.set_num_threads(1)
    dist.init_from_env()
    try:
        for sharding in [x.strip() for x in a.sharding.split(",") if x.strip()]:
            result = train_sharded(sharding, a.steps, a.batch)
            if a.out:
                Path(a.out).mkdir(parents=True, exist_ok=True)
                (Path(a.out) / f"{sharding}-rank{result['rank']}.json").write_text(json.dumps(result))
            if dist.is_main():
                print(json.dumps({k: result[k] for k in ("sharding", "seconds", "examples_per_s", "world_size")}
                                 | {"loss_first": result["losses"][0], "loss_last": result["losses"][-1]}), flush=True)
        # every rank leaves together (as `feedrank train` does): a rank that tore its process
        # group down while another still wrote its result aborted in gloo's teardown (CI, 22:09 UTC)
        dist.barrier()
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
