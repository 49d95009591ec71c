"""Frozen records that cross module boundaries. No torch here.

Timestamps are float seconds since the Unix epoch, UTC, everywhere in records; Parquet
files store them as ``timestamp[ms, tz=UTC]`` (see ``data/schema.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class EventKind(str, Enum):
    IMPRESSION = "impression"
    CLICK = "click"
    DWELL = "dwell"
    HIDE = "hide"


EVENT_KINDS: tuple[str, ...] = tuple(k.value for k in EventKind)


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
