"""Frozen records that cross module boundaries. No torch here.

Timestamps are float seconds since the Unix epoch, UTC, everywhere in records; Parquet
files store them as ``timestamp[ms, tz=UTC]`` (see ``data/schema.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import numpy as np


class EventKind(str, Enum):
    IMPRESSION = "impression"
    CLICK = "click"
    DWELL = "dwell"
    HIDE = "hide"


EVENT_KINDS: tuple[str, ...] = tuple(k.value for k in EventKind)
KIND_CODES: dict[str, int] = {k: i for i, k in enumerate(EVENT_KINDS)}  # EventColumns.kind codes
IMPRESSION_CODE, CLICK_CODE = KIND_CODES["impression"], KIND_CODES["click"]


@dataclass(frozen=True)
class EventColumns:
    """N events as columns: what the live consumer reads and applies (data/eventlog.py
    ``read_batches`` -> features/realtime.py ``apply_columns``) without an ``Event`` per
    record. ``kind`` holds codes into ``EVENT_KINDS`` (``KIND_CODES``); the optional fields
    (position, request id, ...) are not carried."""

    event_id: list[str]
    ts: "np.ndarray"       # (N,) float64
    user_id: list[str]
    item_id: list[str]
    kind: "np.ndarray"     # (N,) int8

    def __post_init__(self) -> None:
        n = len(self.event_id)
        sizes = {"ts": len(self.ts), "user_id": len(self.user_id), "item_id": len(self.item_id), "kind": len(self.kind)}
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise ValueError(f"EventColumns: {n} event ids but column lengths {bad}")

    def __len__(self) -> int:
        return len(self.event_id)

    @classmethod
    def concat(cls, parts: "list[EventColumns]") -> "EventColumns":
        """One batch of ``parts``, in order."""
        if len(parts) == 1:
            return parts[0]
        import numpy as np

        eids: list[str] = []
        users: list[str] = []
        items: list[str] = []
        for p in parts:
            eids += p.event_id
            users += p.user_id
            items += p.item_id
        return cls(eids, np.concatenate([p.ts for p in parts]), users, items, np.concatenate([p.kind for p in parts]))

    @classmethod
    def from_events(cls, events: "Iterable[Event]") -> "EventColumns":
        import numpy as np

        evs = list(events)
        codes = KIND_CODES
        return cls([e.event_id for e in evs], np.fromiter((e.ts for e in evs), np.float64, len(evs)),
                   [e.user_id for e in evs], [e.item_id for e in evs],
                   np.fromiter((codes[EventKind(e.kind).value] for e in evs), np.int8, len(evs)))


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    title: str = ""
    category: str = "unknown"
    subcategory: str = "unknown"
    creator: str = "unknown"
    published_at: float | None = None


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    ts: float
    user_id: str
    item_id: str
    kind: EventKind
    position: int | None = None
    request_id: str | None = None
    propensity: float | None = None
    dwell_ms: float | None = None
    arm: str | None = None          # "<experiment>/<arm>" that served the request, if any


@dataclass(frozen=True, slots=True)
class Candidate:
    """An item proposed by a retrieval source, before ranking."""

    item_id: str
    source: str
    retrieval_score: float = 0.0


@dataclass(frozen=True, slots=True)
class ScoredItem:
    """An item in a served feed."""

    item_id: str
    score: float
    rank: int
    source: str
    title: str = ""
    category: str = "unknown"
    creator: str = "unknown"
    propensity: float = 1.0   # probability the serving policy put this item in this slot
    explanation: tuple[tuple[str, float], ...] = ()  # (feature, contribution to score), largest first


@dataclass(frozen=True, slots=True)
class FeedRequest:
    user_id: str
    k: int = 20
    now: float | None = None
    deadline_ms: float | None = None
    request_id: str | None = None
    explain: bool = False     # add per-item feature contributions (costs one extra ranker call)
    # item ids the caller knows the user was shown, excluded like the user's own seen items
    # (another worker's seen items for a feed handed over to this one: serving/offload.py)
    also_seen: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FeedResponse:
    request_id: str
    user_id: str
    items: tuple[ScoredItem, ...]
    model_version: str
    tier: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    arm: str | None = None          # "<experiment>/<arm>", when an experiment assigned one
    features: str = "local"         # live | baseline | default (feature store degraded) | local (no store)
    funnel: dict[str, int] = field(default_factory=dict)  # explain only: "source:<name>" candidates, ranked, shown
