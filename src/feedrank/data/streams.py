"""The event log at scale: Redis Streams, behind the interface of the embedded log.

    log = open_event_log("", root="var/events")                        # embedded EventLog (default)
    log = open_event_log("file:///abs/var/events", root="var/events")  # the same, spelled out
    log = open_event_log("redis://127.0.0.1:6379/0?stream=events", root="var/events")
    log.append(events)             # AppendResult(accepted, duplicates), idempotent by event id
    for offset, event in log.read((0, 0)): ...        # consumers keeping their own offsets
    g = StreamGroupReader(log, "realtime", "worker-1")  # or a consumer group (at-least-once)
    batch = g.poll(); ...; g.ack([i for i, _ in batch])

``EventLogLike`` is what serving and consumers use of a log: ``append``, ``read``,
``writable``, ``close``, ``root`` (a local folder for side files: item log, consumer
checkpoints) and ``__len__``. ``data.eventlog.EventLog`` and ``RedisEventLog`` fit.

Redis layout (``prefix`` defaults to ``fr:``):

    {prefix}{stream}            the stream; each entry: id = event_id, e = the event's JSON
    {prefix}eid:{event_id}      dedupe marker (SET NX with a TTL, ``dedupe_ttl_s``)

``append`` runs one Lua script per batch: for each event, ``SET NX`` its marker and, only
if it was new, ``XADD`` it, so a batch is applied atomically and a retried batch adds
nothing twice (ids repeated after the marker TTL would be added again; readers dedupe by
event id too). Offsets are stream ids as ``(ms, seq)`` tuples, ordered like the embedded
log's ``(segment, line)``; the next offset after ``(ms, seq)`` is ``(ms, seq + 1)``, so
``features.consumer.LogConsumer`` tails either log unchanged.

Consumer groups (``StreamGroupReader``): ``XREADGROUP`` delivers new entries to one
consumer of the group; entries stay pending until ``XACK``. A consumer that restarts
under the same name first re-reads its own pending entries, and entries idle longer than
``claim_idle_ms`` in a dead consumer are taken over with ``XAUTOCLAIM``: at-least-once
delivery, made exactly-once by sinks that dedupe by event id (``RealtimeFeatures``).

Durability: an accepted event is in Redis when ``append`` returns; it survives a Redis
crash only as far as Redis persistence is configured (``appendonly yes`` with
``appendfsync always`` for the embedded log's guarantee).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence
from urllib.parse import parse_qs, urlparse

import orjson

from feedrank.data.eventlog import AppendResult, EventLog, LogRecord
from feedrank.data.events import event_from_dict, event_to_dict
from feedrank.errors import ConfigError
from feedrank.types import Event

log = logging.getLogger(__name__)

_APPEND = """
local out = {}
for i = 4, #ARGV, 2 do
  if redis.call('SET', ARGV[1] .. ARGV[i], '1', 'NX', 'EX', ARGV[2]) then
    if tonumber(ARGV[3]) > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[i], 'e', ARGV[i + 1])
    else
      redis.call('XADD', KEYS[1], '*', 'id', ARGV[i], 'e', ARGV[i + 1])
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


class EventLogLike(Protocol):
    """What serving and consumers use of an event log."""

    root: Path

    def append(self, events: Iterable[Event]) -> AppendResult: ...

    def read(self, from_offset: tuple[int, int] | None = None) -> Iterator[tuple[tuple[int, int], Event]]: ...

    def writable(self) -> bool: ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...


def open_event_log(url: str, root: str | Path) -> EventLogLike:
    """The event log for ``url``: "" or ``file://DIR`` (embedded; DIR defaults to ``root``)
    or ``redis://host:port/db[?stream=events&prefix=fr:&maxlen=0&dedupe_ttl_s=604800]``.

    Raises:
        ConfigError: an unknown scheme or a URL without the parts it needs.
    """
    if not url:
        return EventLog(Path(root))
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = (parsed.netloc + parsed.path) or str(root)
        return EventLog(Path(path))
    if parsed.scheme == "redis":
        if not parsed.hostname:
            raise ConfigError(f"event log URL {url!r}: expected redis://host:port/db")
        return RedisEventLog(url, root)
    raise ConfigError(f"event log URL {url!r}: unknown scheme {parsed.scheme!r} (use file://DIR or redis://host:port/db)")


def _stream_id(offset: tuple[int, int]) -> str:
    return f"{int(offset[0])}-{int(offset[1])}"


def _offset(stream_id: bytes | str) -> tuple[int, int]:
    s = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, seq = s.split("-", 1)
    return int(ms), int(seq)


class RedisEventLog:
    """The event log on a Redis stream (see the module docstring). Thread-safe."""

    def __init__(self, url: str, root: str | Path, *, socket_timeout: float = 5.0) -> None:
        import redis

        parsed = urlparse(url)
        q = parse_qs(parsed.query)
        self.url = url
        self.prefix = q.get("prefix", ["fr:"])[0]
        self.stream = self.prefix + q.get("stream", ["events"])[0]
        self.maxlen = int(q.get("maxlen", ["0"])[0])
        self.dedupe_ttl_s = int(float(q.get("dedupe_ttl_s", [str(7 * 86400)])[0]))
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._r = redis.Redis.from_url(parsed._replace(query="").geturl(), socket_timeout=socket_timeout,
                                       socket_connect_timeout=socket_timeout)
        self._append = self._r.register_script(_APPEND)
        self._closed = False
        self._r.ping()

    # ------------------------------------------------------------------ writing
    def append(self, events: Iterable[Event], chunk: int = 1000) -> AppendResult:
        """Add the events not seen before (by id), atomically per chunk; returns which were
        accepted and which were duplicates (earlier in the stream or in this batch)."""
        events = list(events)
        accepted: list[str] = []
        duplicates: list[str] = []
        for k in range(0, len(events), chunk):
            part = events[k:k + chunk]
            args: list[object] = [f"{self.prefix}eid:", self.dedupe_ttl_s, self.maxlen]
            for ev in part:
                args += [ev.event_id, orjson.dumps(event_to_dict(ev))]
            flags = self._append(keys=[self.stream], args=args)
            for ev, new in zip(part, flags):
                (accepted if int(new) else duplicates).append(ev.event_id)
        return AppendResult(accepted, duplicates)

    # ------------------------------------------------------------------ reading with own offsets
    def read(self, from_offset: tuple[int, int] | None = None, chunk: int = 1000) -> Iterator[LogRecord]:
        """Entries at or after ``from_offset`` ((ms, seq); default: the beginning), in order,
        as ``(offset, event)``; up to the end of the stream at the time of each chunk."""
        start = _stream_id(from_offset) if from_offset is not None else "-"
        while True:
            rows = self._r.xrange(self.stream, min=start, max="+", count=chunk)
            for sid, fields in rows:
                off = _offset(sid)
                yield LogRecord(off, _decode(fields))  # type: ignore[arg-type]
            if len(rows) < chunk:
                return
            last = _offset(rows[-1][0])
            start = _stream_id((last[0], last[1] + 1))

    def iter_events(self, from_offset: tuple[int, int] | None = None) -> Iterator[LogRecord]:
        return self.read(from_offset)

    def end_offset(self) -> tuple[int, int]:
        """The offset after the last entry ((0, 0) for an empty stream)."""
        rows = self._r.xrevrange(self.stream, count=1)
        if not rows:
            return (0, 0)
        ms, seq = _offset(rows[0][0])
        return (ms, seq + 1)

    def __len__(self) -> int:
        return int(self._r.xlen(self.stream))

    def __contains__(self, event_id: object) -> bool:
        return bool(self._r.exists(f"{self.prefix}eid:{event_id}"))

    # ------------------------------------------------------------------ state
    @property
    def closed(self) -> bool:
        return self._closed

    def writable(self) -> bool:
        if self._closed:
            return False
        try:
            return bool(self._r.ping())
        except Exception:
            return False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._r.close()

    def __enter__(self) -> "RedisEventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(fields: dict) -> Event:
    raw = fields.get(b"e") if b"e" in fields else fields.get("e")
    return event_from_dict(orjson.loads(raw))


class StreamGroupReader:
    """One consumer of a Redis consumer group on a ``RedisEventLog`` (at-least-once).

    ``poll()`` returns ``[(offset, event)]``: first this consumer's own pending entries
    (delivered before a crash, never acked), then entries idle in other consumers for
    ``claim_idle_ms`` (taken over), then new ones. ``ack(offsets)`` commits them."""

    def __init__(self, log: RedisEventLog, group: str, consumer: str, *, start: str = "0",
                 claim_idle_ms: int = 30_000, count: int = 1000) -> None:
        import redis

        self.log, self.group, self.consumer = log, group, consumer
        self.claim_idle_ms, self.count = int(claim_idle_ms), int(count)
        self._pending_done = False
        try:
            log._r.xgroup_create(log.stream, group, id=start, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def poll(self, block_ms: int | None = None) -> list[tuple[tuple[int, int], Event]]:
        r = self.log._r
        out: list[tuple[tuple[int, int], Event]] = []
        if not self._pending_done:  # our own deliveries from before a restart
            got = r.xreadgroup(self.group, self.consumer, {self.log.stream: "0"}, count=self.count)
            rows = got[0][1] if got else []
            rows = [(sid, f) for sid, f in rows if f]  # entries trimmed away come back empty
            if not rows:
                self._pending_done = True
            out += [(_offset(sid), _decode(f)) for sid, f in rows]
            if out:
                return out
        if self.claim_idle_ms > 0:
            claimed = r.xautoclaim(self.log.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.count)
            rows = [(sid, f) for sid, f in claimed[1] if f]
            out += [(_offset(sid), _decode(f)) for sid, f in rows]
            if out:
                return out
        got = r.xreadgroup(self.group, self.consumer, {self.log.stream: ">"}, count=self.count, block=block_ms)
        rows = got[0][1] if got else []
        return [(_offset(sid), _decode(f)) for sid, f in rows]

    def ack(self, offsets: Sequence[tuple[int, int]]) -> int:
        if not offsets:
            return 0
        return int(self.log._r.xack(self.log.stream, self.group, *[_stream_id(o) for o in offsets]))

    def pending(self) -> int:
        """Entries delivered to the group and not yet acked."""
        info = self.log._r.xpending(self.log.stream, self.group)
        return int(info["pending"] if isinstance(info, dict) else info[0])


def consume_group(reader: StreamGroupReader, sink, *, block_ms: int | None = None) -> int:
    """One round: poll the group, apply to ``sink`` (which dedupes by event id), ack.
    Returns how many entries were delivered. A crash before the ack redelivers them."""
    batch = reader.poll(block_ms)
    if batch:
        sink.apply([ev for _, ev in batch])
        reader.ack([off for off, _ in batch])
    return len(batch)
