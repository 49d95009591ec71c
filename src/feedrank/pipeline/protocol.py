"""What the serving layer needs from a recommender (so serving never imports training)."""

from __future__ import annotations

from typing import Protocol, Sequence

from feedrank.types import Event, FeedRequest, FeedResponse, Item


class FeedService(Protocol):
    """A loaded model that answers feed requests and learns from served events."""

    @property
    def model_version(self) -> str: ...

    def recommend(self, request: FeedRequest) -> FeedResponse:
        """Answer one feed request within ``request.deadline_ms``; never raises for a
        dependency that has a fallback. Unknown users get a cold-start feed."""
        ...

    def observe(self, events: Sequence[Event]) -> None:
        """Update in-memory context (recent clicks, seen items) from accepted events."""
        ...

    def has_item(self, item_id: str) -> bool: ...

    def get_item(self, item_id: str) -> Item | None: ...

    def stage_names(self) -> tuple[str, ...]:
        """Names of the stages that appear in ``FeedResponse.timings_ms``."""
        ...
