"""The on-disk format of the embedded event log (data/eventlog.py): segment names, the
CRC-framed JSON line of one event, offsets and the line scanner readers and writers share.

    seg-000001.jsonl:  {"crc":"<8 hex>","e":{...event...}}\\n  (one event per line)

``crc`` is the CRC32 of the exact bytes of the ``e`` value, so a torn or corrupted line is
detected without re-encoding.
"""

from __future__ import annotations

import os
import re
import zlib
from itertools import accumulate, repeat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import orjson

from feedrank.data.events import event_to_dict
from feedrank.types import Event, EventColumns

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SEG_RE = re.compile(r"^seg-(\d{6,})\.jsonl$")
_PREFIX = b'{"crc":"'
_MID = b'","e":'
_HEAD = len(_PREFIX) + 8 + len(_MID)  # 22 bytes before the event JSON
_FRAME = _PREFIX + b"%08x" + _MID  # the head as the writer formats it, for a CRC
_READ_CHUNK = 1 << 20


class LogOffset(NamedTuple):
    """Position of one record: segment number (1-based, as in the file name) and the
    0-based line index inside it. Ordered; ``next()`` is where a consumer resumes."""

    segment: int
    line: int

    def next(self) -> "LogOffset":
        return LogOffset(self.segment, self.line + 1)


class LogRecord(NamedTuple):
    offset: LogOffset
    event: Event


@dataclass(frozen=True)
class LogBatch:
    """Consecutive records of one log as columns (``EventLog.read_batches``): record ``i``
    is at ``(segment[i], line[i])``; ``end()`` is where a reader resumes after the batch."""

    segment: np.ndarray  # (N,) int64
    line: np.ndarray     # (N,) int64
    events: EventColumns

    def __len__(self) -> int:
        return len(self.events)

    def offset_after(self, i: int) -> LogOffset:
        """Where to resume after record ``i`` (``-1``: the last)."""
        return LogOffset(int(self.segment[i]), int(self.line[i]) + 1)

    def end(self) -> LogOffset:
        if not len(self):
            raise ValueError("an empty LogBatch has no end offset")
        return self.offset_after(-1)


@dataclass(frozen=True)
class AppendResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def segment_name(number: int) -> str:
    return f"seg-{number:06d}.jsonl"


def segment_files(root: Path) -> list[tuple[int, Path]]:
    """``(number, path)`` of every segment file in ``root``, in order."""
    out = []
    for p in root.iterdir():
        m = SEG_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def encode_line(event: Event) -> bytes:
    """One log line (with trailing newline) for ``event``."""
    body = orjson.dumps(event_to_dict(event))
    crc = zlib.crc32(body) & 0xFFFFFFFF
    return b"".join((_PREFIX, b"%08x" % crc, _MID, body, b"}\n"))


def line_body(line: bytes) -> bytes | None:
    """The event JSON of one line (without its newline) if its framing and CRC are intact,
    else None (torn/corrupt)."""
    body = line[_HEAD:-1]
    if line[:_HEAD] == _FRAME % (zlib.crc32(body) & 0xFFFFFFFF) and line[-1:] == b"}":
        return body  # the writer's exact framing (one compare); anything else is checked below
    if len(line) < _HEAD + 2 or not line.startswith(_PREFIX) or line[_HEAD - len(_MID) : _HEAD] != _MID:
        return None
    if not line.endswith(b"}"):
        return None
    body = line[_HEAD:-1]
    try:
        crc = int(line[len(_PREFIX) : len(_PREFIX) + 8], 16)
    except ValueError:
        return None
    if zlib.crc32(body) & 0xFFFFFFFF != crc:
        return None
    return body


_ID_HEAD = b'{"event_id":"'


def line_event_id(line: bytes) -> str | None:
    """The ``event_id`` of one intact line (framing and CRC checked), or None when it is
    torn/corrupt or has none. Reads the id where the writer puts it (first) without
    decoding the rest; anything else (an escape in it, another key order) is decoded."""
    body = line_body(line)
    if body is None:
        return None
    if body.startswith(_ID_HEAD):
        end = body.find(b'"', len(_ID_HEAD))
        raw = body[len(_ID_HEAD):end]
        if end > len(_ID_HEAD) and b"\\" not in raw:
            try:
                return raw.decode()
            except UnicodeDecodeError:
                return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    eid = obj.get("event_id") if isinstance(obj, dict) else None
    return eid if isinstance(eid, str) else None


def decode_checked(line: bytes) -> dict | None:
    """``decode_line`` for a line whose framing and CRC were checked already."""
    try:
        obj = orjson.loads(line[_HEAD:-1])
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def decode_line(line: bytes) -> dict | None:
    """The event dict of one line (without its newline), or None if it is torn/corrupt."""
    body = line_body(line)
    if body is None:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def iter_raw_lines(path: Path, limit: int | None, start: int = 0) -> Iterator[tuple[bytes, bool, int]]:
    """(line without newline, terminated, end byte position) for each line of ``path``
    from byte ``start`` (a line start) up to ``limit`` bytes; a final chunk without newline
    comes with terminated=False."""
    with open(path, "rb") as f:
        if start:
            f.seek(start)
        pending = b""
        pos = start  # bytes consumed into complete lines
        remaining = None if limit is None else limit - start
        while True:
            n = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
            if n <= 0:
                break
            chunk = f.read(n)
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()  # after the last newline: the start of the next line
            if lines:
                ends = list(accumulate(map(len, lines), lambda e, k: e + k + 1, initial=pos))
                pos = ends.pop()
                del ends[0]
                ends.append(pos)
                yield from zip(lines, repeat(True), ends)
        if pending:
            yield pending, False, pos + len(pending)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
