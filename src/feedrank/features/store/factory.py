"""``open_store(url)``: pick an online-store backend by URL.

    open_store("memory://")                       # in process
    open_store("sqlite:///var/features.db")       # a file (relative path: sqlite:///var/f.db,
                                                  # absolute: sqlite:////abs/path/f.db)
    open_store("redis://127.0.0.1:6379/0")        # Redis, db 0 (add ?prefix=x: to namespace)

``ttl_s`` (default 7 days) is how long a feature record stays warm without a write.
"""

from __future__ import annotations

from urllib.parse import urlparse

from feedrank.errors import ConfigError
from feedrank.features.store.protocol import OnlineStore

SCHEMES = ("memory", "sqlite", "redis")


def open_store(url: str, ttl_s: float = 7 * 86400.0, **redis_options) -> OnlineStore:
    """An open ``OnlineStore`` for ``url``. ``redis_options`` (``socket_timeout``,
    ``retries``, ``connect``) go to ``RedisStore`` and are ignored by the other backends.

    Raises:
        ConfigError: unknown scheme or a URL without the parts its backend needs.
    """
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme == "memory":
        from feedrank.features.store.memory import MemoryStore

        return MemoryStore(ttl_s=ttl_s, url=url)
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"feature store URL {url!r}: expected sqlite:///relative/path or sqlite:////abs/path")
        from feedrank.features.store.sqlite import SQLiteStore

        return SQLiteStore(path, ttl_s=ttl_s, url=url)
    if scheme == "redis":
        if not parsed.hostname:
            raise ConfigError(f"feature store URL {url!r}: expected redis://host:port/db")
        from feedrank.features.store.redis import RedisStore

        return RedisStore(url, ttl_s=ttl_s, **redis_options)
    raise ConfigError(f"feature store URL {url!r}: unknown scheme {scheme!r} (use one of {', '.join(SCHEMES)})")
