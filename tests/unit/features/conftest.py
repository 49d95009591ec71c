"""Fixtures for the feature-store tests: a private redis-server on a free local port.

The server (``feedrank.features.store.redis_server.RedisServer``) runs with ``--save ''
--appendonly no`` (nothing written to disk) and is stopped after the session. When
``redis-server`` is missing the Redis tests skip, except under ``CI`` where they fail
(``make setup`` installs it from Debian's packages).
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from feedrank.features.store.redis_server import RedisServer


def start_redis(workdir) -> RedisServer:
    """A started server, or a skip (a failure under CI) when redis-server is missing."""
    try:
        return RedisServer.start(workdir)
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>`` of a redis-server started for this test session."""
    srv = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield srv.url
    finally:
        srv.stop()
