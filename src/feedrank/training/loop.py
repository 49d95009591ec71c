"""A resumable, data-parallel epoch/step loop for recipes with dense parameters.

    loop = TrainLoop("ranker", model, {"adam": opt}, rng, meta={...}, arrays=(labels,), epochs=3)
    for epoch in loop.epochs():
        batches = loop.shard(make_batches(loop.epoch_rng(epoch)))   # this rank's share
        for step, b in loop.steps(batches, desc=f"ranker epoch {epoch + 1}"):
            loss = ...                                               # () float tensor
            loop.backward_step(loss)
    running = loop.finish()

What it does for the recipe:

- seeds: one draw from ``rng`` is the recipe's base seed (broadcast from rank 0);
  ``epoch_rng(epoch)`` is ``default_rng([base, epoch])``, so an epoch's data order is a
  pure function of (seed, epoch) and a resumed run sees the same batches;
- resume: inside ``checkpoint.checkpointing`` it loads ``<recipe>.ckpt`` when its
  fingerprint (recipe, ``meta``, world size, ``arrays`` bytes) matches, restores model,
  optimizers, RNG states and the running loss, and ``epochs``/``steps`` start at the saved
  position (a finished recipe runs no steps at all);
- checkpoints every ``every_steps`` steps and at each epoch end (rank 0 writes);
- data parallel: ``shard`` gives each rank a disjoint share of the batches (equal counts),
  ``backward_step`` averages the gradients and the loss over ranks; ``finish`` makes
  every rank's weights rank 0's (they are equal already; this is a cheap guarantee).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence, TypeVar

import numpy as np
import torch

from feedrank.training import checkpoint as ckpt
from feedrank.training import distributed as dist
from feedrank.training.common import progress

T = TypeVar("T")


class TrainLoop:
    def __init__(self, recipe: str, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                 rng: np.random.Generator, meta: dict[str, Any], arrays: Sequence[np.ndarray] = (), epochs: int = 1,
                 show_progress: bool = True) -> None:
        self.recipe = recipe
        self.model = model
        self.optimizers = optimizers
        self.n_epochs = epochs
        self.show_progress = show_progress and dist.is_main()
        self.world = dist.world_size()
        self.base_seed = dist.broadcast_int(int(rng.integers(2**62)))
        self.running = float("nan")
        self.timer = dist.CommTimer()
        self.steps_done = 0  # over all epochs, this run included the resumed part
        self._epoch = 0
        self._start = (0, 0)
        self.resumed = ""
        fp = ckpt.fingerprint({"recipe": recipe, "meta": meta, "world": self.world, "base_seed": self.base_seed}, *arrays)
        self.ck = ckpt.recipe_checkpoints(recipe, fp)
        state = self.ck.resume() if self.ck is not None else None
        if state is not None:
            model.load_state_dict(state["model"])
            for name, opt in optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            ckpt.set_global_rng_state(state["rng"])
            self._start = (int(state["epoch"]), int(state["step"]))
            self.running = float(state["extra"]["running"])
            self.steps_done = int(state["extra"]["steps_done"])
            self.resumed = f"epoch {self._start[0]} step {self._start[1]}" + (" (finished)" if state.get("done") else "")

    def epoch_rng(self, epoch: int) -> np.random.Generator:
        """The epoch's generator: a pure function of (base seed, epoch), the same on every rank."""
        return np.random.default_rng([self.base_seed, epoch])

    def shard(self, batches: Sequence[T]) -> list[T]:
        """This rank's batches: ``batches[rank::world]``, cut to an equal count on every rank."""
        per = len(batches) // self.world
        if per == 0:
            raise ValueError(f"{self.recipe}: {len(batches)} batches cannot be shared by {self.world} ranks")
        return list(batches[dist.rank() :: self.world][:per])

    def epochs(self) -> Iterator[int]:
        for epoch in range(self._start[0], self.n_epochs):
            self._epoch = epoch
            yield epoch
            if self.ck is not None:
                self._save(epoch + 1, 0, epoch + 1 == self.n_epochs)

    def steps(self, batches: Sequence[T], desc: str = "") -> Iterator[tuple[int, T]]:
        """(step, batch) from the resumed position on; checkpoints after due steps."""
        first = self._start[1] if self._epoch == self._start[0] else 0
        bar = progress(range(first, len(batches)), desc=desc, enabled=self.show_progress, unit="batch")
        for step in bar:
            yield step, batches[step]
            self.steps_done += 1
            if step % 50 == 0:
                bar.set_postfix(loss=f"{self.running:.4f}")
            if self.ck is not None and step + 1 < len(batches) and self.ck.due(self.steps_done):
                self._save(self._epoch, step + 1, False)

    def backward_step(self, loss: torch.Tensor, sparse: Sequence[torch.nn.Parameter] = ()) -> float:
        """zero_grad, backward, gradient (and loss) mean over ranks, step every optimizer;
        returns the smoothed running loss (the same on every rank)."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if self.world > 1:
            sparse_ids = {id(p) for p in sparse}
            dense = [p for p in self.model.parameters() if p.requires_grad and id(p) not in sparse_ids]
            value = float(dist.average_gradients(dense, list(sparse), torch.tensor([value]), self.timer)[0])
        for opt in self.optimizers.values():
            opt.step()
        self.running = value if np.isnan(self.running) else 0.98 * self.running + 0.02 * value
        return self.running

    def finish(self) -> float:
        dist.broadcast_module(self.model)
        return self.running

    def _save(self, epoch: int, step: int, done: bool) -> None:
        assert self.ck is not None
        self.ck.save({"epoch": epoch, "step": step, "done": done, "base_seed": self.base_seed,
                      "model": self.model.state_dict(),
                      "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                      "rng": ckpt.global_rng_state(),
                      "extra": {"running": self.running, "steps_done": self.steps_done}})
