"""Creator exposure fairness: a floor on the share of slots for a protected group (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def exposure_floor(order: Sequence[int], groups: Sequence[str], protected: str, min_share: float, k: int) -> list[int]:
    """Ensure at least ``ceil(min_share * k)`` of the first ``k`` entries are from the
    ``protected`` group when the candidates have that many: the best protected entries
    outside the top ``k`` replace the lowest-ranked unprotected ones inside it. Relative
    order is otherwise kept. Returns the whole reordered list."""
    order = list(order)
    if min_share <= 0 or not order:
        return order
    top, rest = order[:k], order[k:]
    need = math.ceil(min_share * min(k, len(order))) - sum(groups[i] == protected for i in top)
    if need <= 0:
        return order
    promote = [i for i in rest if groups[i] == protected][:need]
    if not promote:
        return order
    demote_pos = [p for p in range(len(top) - 1, -1, -1) if groups[top[p]] != protected][: len(promote)]
    demoted = [top[p] for p in sorted(demote_pos)]
    new_top = [i for p, i in enumerate(top) if p not in set(demote_pos)]
    # re-insert promoted entries where their original rank would place them among new_top
    rank = {i: r for r, i in enumerate(order)}
    new_top = sorted(new_top + promote, key=lambda i: rank[i])
    new_rest = sorted(demoted + [i for i in rest if i not in set(promote)], key=lambda i: rank[i])
    return new_top + new_rest
