"""An exploration slot whose propensity is logged with the impression (pure).

Randomness comes in as numbers (``u`` uniform in [0, 1), ``pick`` an integer), drawn by
the caller from a generator seeded with the request id, so a request replays exactly.
"""

from __future__ import annotations

from collections.abc import Sequence


def exploration_slot(top: Sequence[int], pool: Sequence[int], position: int, epsilon: float, u: float,
                     pick: int) -> tuple[list[int], list[float]]:
    """With probability ``epsilon`` the entry at ``position`` is replaced by a uniform draw
    from ``pool`` (eligible candidates not in ``top``).

    Returns (entries, propensity per entry): an explored entry has propensity
    ``epsilon / len(pool)``; the greedy entry at that slot, when kept, ``1 - epsilon``;
    every other slot is deterministic (1.0)."""
    out = list(top)
    props = [1.0] * len(out)
    if epsilon <= 0 or not pool or position >= len(out):
        return out, props
    if u < epsilon:
        out[position] = pool[pick % len(pool)]
        props[position] = epsilon / len(pool)
    else:
        props[position] = 1.0 - epsilon
    return out, props
