"""The fast path marks the event loop busy while it runs a feed inline (``Foreground``), so
the live consumer can wait for it (features/consumer.py); an error does not leave it set."""

from __future__ import annotations

import asyncio

from feedrank.serving.fastfeed import FeedFastPath, Foreground
from feedrank.serving.metrics import ServingMetrics


def _call(fast: FeedFastPath, query: bytes) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "GET", "path": "/v1/feed", "query_string": query, "headers": []}
    asyncio.run(fast(scope, receive, send))
    return sent


def test_busy_exactly_while_the_feed_runs_inline():
    fg = Foreground()
    seen = []

    def feed(user_id, k, explain, deadline, rid):
        seen.append(fg.busy())
        if user_id == "boom":
            raise RuntimeError("pipeline failed")
        return b"{}"

    async def route(scope, receive, send):  # never reached: the fast path answers these
        raise AssertionError("route called")

    fast = FeedFastPath(route, feed, ServingMetrics(), max_k=50, default_k=20, valid_request_id=lambda r: True,
                        foreground=fg)
    assert not fg.busy()
    assert _call(fast, b"user_id=u1&k=5")[0]["status"] == 200
    assert _call(fast, b"user_id=boom")[0]["status"] == 500
    assert seen == [True, True] and not fg.busy() and fg.active == 0
