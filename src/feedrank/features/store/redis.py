"""``redis://host:port/db``: the online store on Redis (shared by every replica).

Layout (``prefix`` defaults to ``fr:``; ``redis://host:port/db?prefix=x:`` changes it):

    {prefix}u:{user_id}          hash: feature name -> value, plus field "\\x00ts"
    {prefix}i:{item_id}          hash, same
    {prefix}c:{window}:{key}     hash: bucket number -> summed amount (HINCRBYFLOAT)

Every read and write of a batch is one pipelined round trip. Cold records are judged by
their "\\x00ts" field against the caller's ``now`` (like the other backends); besides,
each key gets a Redis ``EXPIRE`` (``ttl_s`` for records, two windows for counters) so that
memory stays bounded even if nobody calls ``evict``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence
from urllib.parse import parse_qs, urlparse

import numpy as np

from feedrank.features.store.base import StoreBase
from feedrank.features.store.protocol import Record, is_cold, live_buckets, parse_number

TS_FIELD = "\x00ts"
_HMGET_MANY = "local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('HMGET', k, unpack(ARGV)) end return out"
_TABLE_TAG = {"users": "u", "items": "i"}


def _decode(h: Mapping[bytes, bytes]) -> tuple[float, Record] | None:
    if not h:
        return None
    rec = {k.decode(): parse_number(v) for k, v in h.items()}
    ts = rec.pop(TS_FIELD, None)
    return (ts if isinstance(ts, float) else float("-inf")), rec  # type: ignore[return-value]


class RedisStore(StoreBase):
    """Implements ``OnlineStore`` on one Redis database (see the module docstring)."""

    def __init__(self, url: str, ttl_s: float = 7 * 86400.0, *, socket_timeout: float | None = None,
                 retries: int | None = None, connect: bool = True) -> None:
        """``socket_timeout`` (seconds, default 5; URL ``?timeout=``) bounds every call;
        ``retries`` (default 3; URL ``?retries=``) is how often a call is retried after a
        connection error or timeout. ``connect=False`` skips the initial PING (the
        serving path opens the store even while Redis is down and degrades to defaults)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        self.prefix = query.get("prefix", ["fr:"])[0]
        timeout = float(query["timeout"][0]) if socket_timeout is None and "timeout" in query else socket_timeout
        timeout = 5.0 if timeout is None else float(timeout)
        n_retries = int(query["retries"][0]) if retries is None and "retries" in query else retries
        n_retries = 3 if n_retries is None else int(n_retries)
        self.url = url
        self.ttl_s = float(ttl_s)
        self._hmget_many = None
        base = parsed._replace(query="").geturl()
        self._r = redis.Redis.from_url(base, socket_timeout=timeout, socket_connect_timeout=timeout,
                                       retry=Retry(NoBackoff(), n_retries),
                                       retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])
        if connect:
            self._r.ping()

    def _key(self, table: str, key: str) -> str:
        return f"{self.prefix}{_TABLE_TAG[table]}:{key}"

    def _ckey(self, window_s: int, key: str) -> str:
        return f"{self.prefix}c:{int(window_s)}:{key}"

    # ------------------------------------------------------------------ features
    def _put_records(self, table: str, rows: Mapping[str, Record], ts: float) -> None:
        pipe = self._r.pipeline(transaction=True)
        for key, rec in rows.items():
            k = self._key(table, key)
            pipe.hset(k, mapping={**{n: repr(v) for n, v in rec.items()}, TS_FIELD: repr(float(ts))})
            if self.ttl_s > 0:
                pipe.expire(k, max(1, int(self.ttl_s)))
        pipe.execute()

    def _user_record(self, user_id: str) -> tuple[float, Record] | None:
        return _decode(self._r.hgetall(self._key("users", user_id)))

    def _item_records(self, item_ids: list[str], names: Sequence[str]) -> list[tuple[float, Record] | None]:
        """One ``EVALSHA`` (HMGET per key inside Redis): one round trip and one reply, far
        cheaper for the client than a pipeline of N commands (measured: ~12 vs ~49 ms for
        500 items with hiredis on a loaded 2-core box)."""
        fields = [TS_FIELD, *names]
        if self._hmget_many is None:
            self._hmget_many = self._r.register_script(_HMGET_MANY)
        keys = [self._key("items", i) for i in item_ids]
        replies: list = []
        for k in range(0, len(keys), 4000):  # a script blocks Redis while it runs: bounded chunks
            replies += self._hmget_many(keys=keys[k:k + 4000], args=fields)
        recs: list[tuple[float, Record] | None] = []
        for vals in replies:
            if vals[0] is None:
                recs.append(None)
                continue
            rec = {n: parse_number(v) for n, v in zip(names, vals[1:]) if v is not None}
            ts = parse_number(vals[0])
            recs.append((ts if isinstance(ts, float) else float("-inf"), rec))  # type: ignore[arg-type]
        return recs

    # ------------------------------------------------------------------ counters
    def _add_counts(self, window_s: int, keys: list[str], bucket: int, amts: list[float], ts: float) -> None:
        b = str(bucket)
        pipe = self._r.pipeline(transaction=False)
        for key, a in zip(keys, amts):
            ck = self._ckey(window_s, key)
            pipe.hincrbyfloat(ck, b, a)
            pipe.expire(ck, 2 * int(window_s))
        pipe.execute()

    def _sum_counts(self, window_s: int, keys: list[str], first: int, last: int) -> np.ndarray:
        fields = [str(b) for b in range(first, last + 1)]
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self._ckey(window_s, key), fields)
        return np.array([sum(float(v) for v in vals if v is not None) for vals in pipe.execute()], dtype=np.float64)

    # ------------------------------------------------------------------ eviction, state
    def _scan(self, pattern: str) -> list[bytes]:
        return list(self._r.scan_iter(match=f"{self.prefix}{pattern}", count=1000))

    def evict(self, now: float) -> int:
        n = 0
        for table, tag in _TABLE_TAG.items():
            keys = self._scan(f"{tag}:*")
            if not keys:
                continue
            pipe = self._r.pipeline(transaction=False)
            for k in keys:
                pipe.hget(k, TS_FIELD)
            cold = [k for k, ts in zip(keys, pipe.execute()) if ts is None or is_cold(float(ts), now, self.ttl_s)]
            if cold:
                n += int(self._r.delete(*cold))
        for ck in self._scan("c:*"):
            window_s = int(ck.decode()[len(self.prefix) + 2 :].split(":", 1)[0])
            first, _ = live_buckets(window_s, now)
            old = [b for b in self._r.hkeys(ck) if int(b) < first]
            if old:
                self._r.hdel(ck, *old)
        return n

    def export_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"users": {}, "items": {}, "counters": {}}
        for table, tag in _TABLE_TAG.items():
            skip = len(self.prefix) + len(tag) + 1
            for k in self._scan(f"{tag}:*"):
                rec = _decode(self._r.hgetall(k))
                if rec is not None:
                    out[table][k.decode()[skip:]] = [rec[0], rec[1]]
        for ck in self._scan("c:*"):
            window_s, key = ck.decode()[len(self.prefix) + 2 :].split(":", 1)
            buckets = {int(b): float(v) for b, v in self._r.hgetall(ck).items()}
            out["counters"].setdefault(int(window_s), {})[key] = buckets
        return out

    def import_state(self, state: Mapping[str, Any]) -> None:
        old = self._scan("*")
        pipe = self._r.pipeline(transaction=True)
        if old:
            pipe.delete(*old)
        for table in ("users", "items"):
            for key, (ts, rec) in state.get(table, {}).items():
                k = self._key(table, str(key))
                pipe.hset(k, mapping={**{n: repr(float(v)) for n, v in rec.items()}, TS_FIELD: repr(float(ts))})
                if self.ttl_s > 0:
                    pipe.expire(k, max(1, int(self.ttl_s)))
        for window_s, keys in state.get("counters", {}).items():
            for key, buckets in keys.items():
                if buckets:
                    ck = self._ckey(int(window_s), str(key))
                    pipe.hset(ck, mapping={str(int(b)): repr(float(v)) for b, v in buckets.items()})
                    pipe.expire(ck, 2 * int(window_s))
        pipe.execute()

    def close(self) -> None:
        self._r.close()
