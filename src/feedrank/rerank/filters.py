"""Policy filters: blocklists of items, creators and categories (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Blocklist:
    items: frozenset[str] = frozenset()
    creators: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.items or self.creators or self.categories)

    @classmethod
    def from_dict(cls, raw: dict) -> Blocklist:
        """``{"items": [...], "creators": [...], "categories": [...]}``; other keys rejected."""
        from feedrank.errors import SchemaError

        unknown = set(raw) - {"items", "creators", "categories"}
        problems = [f"{k}: unknown key (allowed: items, creators, categories)" for k in sorted(unknown)]
        for k in ("items", "creators", "categories"):
            v = raw.get(k, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                problems.append(f"{k}: expected a list of strings")
        if problems:
            raise SchemaError("invalid blocklist", problems)
        return cls(frozenset(raw.get("items", [])), frozenset(raw.get("creators", [])), frozenset(raw.get("categories", [])))


def apply_blocklist(order: Sequence[int], item_ids: Sequence[str], creators: Sequence[str], categories: Sequence[str],
                    blocklist: Blocklist) -> list[int]:
    """Drop every entry whose item, creator or category is blocked."""
    if not blocklist:
        return list(order)
    b = blocklist
    return [i for i in order if item_ids[i] not in b.items and creators[i] not in b.creators and categories[i] not in b.categories]
