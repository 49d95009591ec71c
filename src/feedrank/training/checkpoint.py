"""Step checkpoints for the training recipes: atomic, pickle-free, resumable.

A recipe that runs inside ``checkpointing(directory, every_steps)`` saves, every
``every_steps`` optimizer steps and at the end of each epoch, one file
``<directory>/<recipe>.ckpt`` holding everything needed to continue from the exact step:

    model        state_dict
    optimizers   {name: optimizer.state_dict()}
    epoch, step  the data position: the next step to run is ``step`` of ``epoch``
    base_seed    the recipe's seed; the epoch's order is a pure function of (base_seed, epoch)
    rng          torch / numpy (legacy and the recipe's Generator) / python ``random`` states
    extra        recipe-specific tensors and numbers (running loss, mined negatives, ...)
    fingerprint  a hash of the recipe's config and data: a checkpoint of another run is ignored
    done         True once the recipe finished (a restart then skips training altogether)

Writes are atomic (temporary file, fsync, ``os.replace``, fsync of the folder), so a
``kill -9`` at any moment leaves either the previous checkpoint or the new one, never a
torn file. Files are read with ``torch.load(weights_only=True)``: numpy RNG states are
stored as plain ints and tensors, nothing is unpickled. Under ``torch.distributed`` only
rank 0 writes (then every rank meets at a barrier); every rank reads.

Outside a ``checkpointing`` block ``recipe_checkpoints`` returns None and the recipes
run exactly as before (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from feedrank.training import distributed as dist

log = logging.getLogger(__name__)

FORMAT = 1
SUFFIX = ".ckpt"


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where step checkpoints go, how often (``every_steps`` optimizer steps; 0: only at
    epoch ends) and whether an existing matching checkpoint is resumed."""

    directory: Path
    every_steps: int = 500
    resume: bool = True


_POLICY: ContextVar[CheckpointPolicy | None] = ContextVar("feedrank_checkpoint_policy", default=None)


@contextlib.contextmanager
def checkpointing(directory: str | Path, every_steps: int = 500, resume: bool = True) -> Iterator[CheckpointPolicy]:
    """Recipes called inside this block checkpoint into ``directory`` and resume from it."""
    if every_steps < 0:
        raise ValueError(f"every_steps must be >= 0, got {every_steps}")
    policy = CheckpointPolicy(Path(directory), int(every_steps), resume)
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def active_policy() -> CheckpointPolicy | None:
    return _POLICY.get()


def fingerprint(meta: dict[str, Any], *arrays: np.ndarray) -> str:
    """sha256 (16 hex) of a JSON-able ``meta`` dict and the bytes of ``arrays``: what makes
    a checkpoint belong to this run (config, data, world size)."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# RNG states as plain values (weights_only-safe)


def generator_state(g: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's bit-generator state (nested dict of str / int)."""
    return dict(g.bit_generator.state)


def set_generator_state(g: np.random.Generator, state: dict[str, Any]) -> None:
    g.bit_generator.state = state


def global_rng_state() -> dict[str, Any]:
    """torch, numpy legacy (MT19937 as a tensor) and python ``random`` states."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


# ---------------------------------------------------------------------------------------
# atomic files


def save_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save ``payload`` to ``path`` atomically: temp file in the same folder, fsync,
    ``os.replace``, fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None if absent); ``weights_only=True``, no pickle."""
    path = Path(path)
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        log.warning("%s: not a feedrank checkpoint (format %r); ignored", path, getattr(state, "get", lambda _k: None)("format"))
        return None
    return state


# ---------------------------------------------------------------------------------------
# what a recipe uses


class RecipeCheckpoints:
    """The checkpoint file of one recipe in one run.

        ck = recipe_checkpoints("two_tower", fp)       # None outside checkpointing()
        state = ck.resume() if ck else None             # dict or None
        ...
        if ck and ck.due(steps_done): ck.save({...})
    """

    def __init__(self, policy: CheckpointPolicy, recipe: str, fp: str) -> None:
        self.policy = policy
        self.recipe = recipe
        self.fingerprint = fp
        self.path = policy.directory / f"{recipe}{SUFFIX}"
        self.saves = 0

    def resume(self) -> dict[str, Any] | None:
        """The saved state to continue from, or None (none, resume off, or another run's)."""
        if not self.policy.resume:
            return None
        state = load_checkpoint(self.path)
        if state is None:
            return None
        if state.get("recipe") != self.recipe or state.get("fingerprint") != self.fingerprint:
            log.warning("%s: checkpoint of another run (fingerprint %s, this run %s); starting fresh",
                        self.path, state.get("fingerprint"), self.fingerprint)
            return None
        log.info("%s: resuming %s at epoch %d step %d%s", self.path, self.recipe, state["epoch"], state["step"],
                 " (finished)" if state.get("done") else "")
        return state

    def due(self, steps_done: int) -> bool:
        """True when a checkpoint should be written after ``steps_done`` steps of this run
        (counted over epochs)."""
        every = self.policy.every_steps
        return every > 0 and steps_done > 0 and steps_done % every == 0

    def save(self, state: dict[str, Any]) -> None:
        """Rank 0 writes ``state`` (plus format, recipe, fingerprint) atomically; all ranks
        then meet at a barrier so none runs ahead of a checkpoint it may resume from."""
        if dist.is_main():
            save_atomic(self.path, {**state, "format": FORMAT, "recipe": self.recipe, "fingerprint": self.fingerprint})
            self.saves += 1
        dist.barrier()


def recipe_checkpoints(recipe: str, fp: str) -> RecipeCheckpoints | None:
    """The checkpoints of ``recipe`` under the active ``checkpointing`` policy (None: off)."""
    policy = active_policy()
    return None if policy is None else RecipeCheckpoints(policy, recipe, fp)


def clear_step_checkpoints(directory: str | Path) -> int:
    """Remove the ``*.ckpt`` step checkpoints in ``directory`` (after a bundle is written)
    and temporary files a killed writer left; returns how many checkpoints were removed.
    Per-epoch weight files are kept."""
    d = Path(directory)
    if not d.is_dir():
        return 0
    for p in d.glob(f".*{SUFFIX}.tmp-*"):
        p.unlink(missing_ok=True)
    n = 0
    for p in d.glob(f"*{SUFFIX}"):
        p.unlink()
        n += 1
    return n
