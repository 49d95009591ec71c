"""The durable, append-only event log (embedded backend).

    log = EventLog(Path("run/events"))
    res = log.append(events)            # durable (fsync'd) when this returns
    for rec in log.read(from_offset=LogOffset(1, 0)):
        rec.offset, rec.event

Layout: ``root/seg-000001.jsonl``, ``seg-000002.jsonl``, ... Each line is one JSON
object ``{"crc":"<8 hex>","e":{...event...}}`` where ``crc`` is the CRC32 of the exact
bytes of the ``e`` value, so a torn or corrupted line is detected without re-encoding.

Guarantees:

* ``append`` writes every new event of the batch, then fsyncs once, then returns. An
  event in ``AppendResult.accepted`` survives a crash (``kill -9``) of the process.
  Group commit: appends from concurrent threads that wait for an fsync at the same time
  share one (the first becomes the leader and syncs everything written so far), so N
  concurrent writers cost ~1 fsync per round, not N. A lone writer still does exactly
  one fsync per batch. If an fsync fails, every batch not yet durable fails (OSError),
  is truncated away and its ids are forgotten. An append whose events duplicate a batch
  still awaiting its fsync returns only after that fsync (and fails with it).
* Idempotent by ``event_id``: an id already in the log (from this process or an earlier
  one; the id set is rebuilt by scanning segments on open) or repeated within the batch
  is reported in ``duplicates`` and not written again.
* On open, a torn tail of the last segment (a crash mid-write) is truncated and logged;
  a bad line followed by good lines (corruption, not a crash) raises ``CorruptFile``
  naming the segment and line.
* One writer per directory (an ``flock`` on ``root/LOCK``); any number of
  ``EventLog(root, readonly=True)`` readers, which never repair anything.
* Thread-safe: one lock around appends; readers see only fully committed batches.

``ImpressionWriter`` batches server-generated impressions onto a log from a background
thread (bounded buffer, ``submit`` never blocks; flushed on ``close``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import orjson

from feedrank.data.events import event_from_dict, event_to_dict
from feedrank.errors import CorruptFile, FeedrankError
from feedrank.types import Event

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_SEG_RE = re.compile(r"^seg-(\d{6,})\.jsonl$")
_PREFIX = b'{"crc":"'
_MID = b'","e":'
_HEAD = len(_PREFIX) + 8 + len(_MID)  # 22 bytes before the event JSON
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
class AppendResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


@dataclass
class _Segment:
    number: int
    path: Path
    size: int  # committed bytes (ends on a line boundary)
    lines: int  # committed lines
    written: int = -1  # bytes written, durable or not yet (group commit); >= size
    written_lines: int = -1

    def __post_init__(self) -> None:
        if self.written < 0:
            self.written, self.written_lines = self.size, self.lines


def segment_name(number: int) -> str:
    return f"seg-{number:06d}.jsonl"


def encode_line(event: Event) -> bytes:
    """One log line (with trailing newline) for ``event``."""
    body = orjson.dumps(event_to_dict(event))
    crc = zlib.crc32(body) & 0xFFFFFFFF
    return b"".join((_PREFIX, b"%08x" % crc, _MID, body, b"}\n"))


def decode_line(line: bytes) -> dict | None:
    """The event dict of one line (without its newline), or None if it is torn/corrupt."""
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
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _iter_raw_lines(path: Path, limit: int | None, start: int = 0) -> Iterator[tuple[bytes, bool, int]]:
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
            buf = pending + chunk
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                pos += nl + 1 - start
                yield buf[start:nl], True, pos
                start = nl + 1
            pending = buf[start:]
        if pending:
            yield pending, False, pos + len(pending)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """Append-only, fsync'd, idempotent event log in ``root`` (see module docstring)."""

    def __init__(self, root: str | Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES, *, readonly: bool = False) -> None:
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be >= 1")
        self.root = Path(root)
        self.segment_bytes = int(segment_bytes)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._ids: set[str] = set()
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self.repaired_bytes = 0  # torn-tail bytes removed on open
        # readers: segment -> (line, byte position where it starts), so a consumer resuming
        # mid-segment seeks there instead of re-reading the segment from its start
        self._resume: dict[int, tuple[int, int]] = {}
        # group commit: appends get a sequence number; an fsync makes all up to one durable
        self._sync_cond = threading.Condition(threading.Lock())
        self._write_seq = 0
        self._durable_seq = 0
        self._syncing = False
        self._pending: list[tuple[int, list[str]]] = []  # (seq, ids) written, not yet durable
        self._failures: deque[tuple[int, int, BaseException]] = deque(maxlen=64)
        if readonly:
            if not self.root.is_dir():
                raise FileNotFoundError(f"event log not found: {self.root}")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self._acquire_dir_lock()
        try:
            self._scan()
            if not readonly:
                self._open_tail()
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ open / close

    def _acquire_dir_lock(self) -> None:
        fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FeedrankError(
                f"event log {self.root} is open for writing by another EventLog "
                "(one writer per directory; use readonly=True to read)"
            ) from None
        self._lock_fd = fd

    def _segment_files(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.root.iterdir():
            m = _SEG_RE.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def _scan(self) -> None:
        files = self._segment_files()
        for i, (number, path) in enumerate(files):
            last = i == len(files) - 1
            good_end = 0
            lines = 0
            bad: tuple[int, int] | None = None  # (1-based line, byte position)
            for raw, terminated, end in _iter_raw_lines(path, None):
                obj = decode_line(raw) if terminated else None
                eid = obj.get("event_id") if obj is not None else None
                if obj is None or not isinstance(eid, str):
                    if bad is None:
                        bad = (lines + 1, good_end)
                    continue
                if bad is not None:
                    raise CorruptFile(
                        f"event log {path}: line {bad[0]} is corrupt (CRC or JSON check failed) "
                        f"but later lines are intact; this is not a torn write: restore the "
                        f"segment from a backup or move it aside"
                    )
                self._ids.add(eid)
                lines += 1
                good_end = end
            size = path.stat().st_size
            if bad is not None or good_end != size:
                if not last:
                    raise CorruptFile(
                        f"event log {path}: line {bad[0] if bad else lines + 1} is torn or corrupt "
                        f"and this is not the last segment"
                    )
                if self.readonly:
                    pass  # a writer may be mid-append; read only the committed part
                else:
                    with open(path, "r+b") as f:
                        f.truncate(good_end)
                        f.flush()
                        os.fsync(f.fileno())
                    self.repaired_bytes = size - good_end
                    log.warning(
                        "event log %s: truncated a torn tail of %d bytes at line %d (crash mid-write)",
                        path,
                        size - good_end,
                        lines + 1,
                    )
            self._segments.append(_Segment(number, path, good_end, lines))

    def _open_tail(self) -> None:
        if not self._segments:
            self._new_segment(1)
        else:
            tail = self._segments[-1]
            self._fd = os.open(tail.path, os.O_WRONLY | os.O_APPEND)

    def _new_segment(self, number: int) -> None:
        path = self.root / segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        _fsync_dir(self.root)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._segments.append(_Segment(number, path, 0, 0))

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        with self._lock:
            if not self._closed and self._fd is not None and self._segments:
                try:
                    self._sync_pending_locked()
                except OSError:
                    log.exception("event log %s: final fsync on close failed", self.root)
            self._closed = True
            self._release()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def append(self, events: Iterable[Event]) -> AppendResult:
        """Write every event whose id is new, fsync once, return which ids were written.

        Raises:
            FeedrankError: the log is closed or read-only.
            OSError: the write or fsync failed; nothing of the batch is then kept.
        """
        events = list(events)
        with self._lock:
            if self._closed or self.readonly or self._fd is None:
                raise FeedrankError(f"event log {self.root} is {'read-only' if self.readonly else 'closed'}")
            accepted: list[str] = []
            duplicates: list[str] = []
            seen: set[str] = set()
            parts: list[bytes] = []
            for ev in events:
                eid = ev.event_id
                if eid in self._ids or eid in seen:
                    duplicates.append(eid)
                    continue
                seen.add(eid)
                accepted.append(eid)
                parts.append(encode_line(ev))
            # a duplicate of a batch still awaiting its fsync is only "in the log" once that
            # fsync is done: wait for it too (and fail with it)
            dup_wait = self._write_seq if duplicates and self._pending else 0
            if not parts:
                seq = dup_wait
            else:
                seq = self._write_batch(parts, accepted)
        if seq:
            self._wait_durable(seq)
        return AppendResult(accepted, duplicates)

    def _write_batch(self, parts: list[bytes], accepted: list[str]) -> int:
        """Under ``_lock``: write the encoded lines to the tail; its append sequence number."""
        tail = self._segments[-1]
        if tail.written >= self.segment_bytes:
            self._sync_pending_locked()  # the old segment is complete and durable first
            self._new_segment(tail.number + 1)
            tail = self._segments[-1]
        data = b"".join(parts)
        start = tail.written
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except BaseException:
            # Drop the partial batch so the file still ends on a whole line (other
            # threads' written batches before ``start`` stay: they await their fsync).
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                log.exception("event log %s: could not roll back a failed append", tail.path)
            raise
        tail.written += len(data)
        tail.written_lines += len(parts)
        self._ids.update(accepted)
        self._write_seq += 1
        self._pending.append((self._write_seq, accepted))
        return self._write_seq

    # ------------------------------------------------------------------ group commit

    def _wait_durable(self, seq: int) -> None:
        """Return once append ``seq`` is fsync'd (leading an fsync if none is running)."""
        while True:
            with self._sync_cond:
                while True:
                    for lo, hi, exc in self._failures:
                        if lo <= seq <= hi:
                            raise OSError(f"event log {self.root}: fsync failed, batch not written: {exc}") from exc
                    if self._durable_seq >= seq:
                        return
                    if not self._syncing:
                        self._syncing = True
                        break
                    self._sync_cond.wait()
            self._lead_sync()

    def _lead_sync(self) -> None:
        """fsync everything written so far (outside the append lock), then publish it."""
        try:
            with self._lock:
                target = self._write_seq
                seg = self._segments[-1] if self._segments else None
                fd = os.dup(self._fd) if self._fd is not None and seg is not None else None
                size, lines = (seg.written, seg.written_lines) if seg is not None else (0, 0)
            if fd is not None:
                try:
                    os.fsync(fd)  # a dup: safe even if a roll or close closes self._fd meanwhile
                finally:
                    os.close(fd)
                with self._lock:
                    self._publish_locked(seg, size, lines, target)  # type: ignore[arg-type]
        except BaseException as exc:
            with self._lock:
                self._fail_pending_locked(exc)
        finally:
            with self._sync_cond:
                self._syncing = False
                self._sync_cond.notify_all()

    def _publish_locked(self, seg: _Segment, size: int, lines: int, target: int) -> None:
        """Appends up to ``target`` are durable: readers may see ``seg`` up to ``size``."""
        if size > seg.size:
            seg.size, seg.lines = size, lines
        self._pending = [(s, ids) for s, ids in self._pending if s > target]
        with self._sync_cond:
            self._durable_seq = max(self._durable_seq, target)
            self._sync_cond.notify_all()

    def _sync_pending_locked(self) -> None:
        """Under ``_lock``: fsync the tail now if it has written-but-not-durable bytes."""
        tail = self._segments[-1]
        if tail.written == tail.size and not self._pending:
            return
        try:
            os.fsync(self._fd)  # type: ignore[arg-type]
        except BaseException as exc:
            self._fail_pending_locked(exc)
            raise
        self._publish_locked(tail, tail.written, tail.written_lines, self._write_seq)

    def _fail_pending_locked(self, exc: BaseException) -> None:
        """Under ``_lock``: an fsync failed; every not-yet-durable batch fails and is
        truncated away, its ids forgotten (a retry may write them again)."""
        tail = self._segments[-1] if self._segments else None
        if tail is not None and self._fd is not None:
            try:
                os.ftruncate(self._fd, tail.size)
            except OSError:
                log.exception("event log %s: could not roll back failed appends", tail.path)
            tail.written, tail.written_lines = tail.size, tail.lines
        lo = self._pending[0][0] if self._pending else self._write_seq + 1
        for _s, ids in self._pending:
            self._ids.difference_update(ids)
        self._pending = []
        log.error("event log %s: fsync failed (%s); %d pending append(s) failed", self.root, exc, self._write_seq - lo + 1)
        with self._sync_cond:
            self._failures.append((lo, self._write_seq, exc))
            self._sync_cond.notify_all()

    # ------------------------------------------------------------------ reading

    def _refresh_readonly(self) -> None:
        """Readers of a live log: pick up new segments/lines the writer committed."""
        self._ids.clear()
        self._segments.clear()
        self._scan()

    def read(self, from_offset: LogOffset | tuple[int, int] | None = None) -> Iterator[LogRecord]:
        """Records at or after ``from_offset`` (default: the beginning), in log order.

        Only batches committed before the call are read. To resume after a record
        ``rec``, pass ``rec.offset.next()``.
        """
        with self._lock:
            if self.readonly:
                self._refresh_readonly()
            snapshot = [(s.number, s.path, s.size) for s in self._segments]
        start = LogOffset(*from_offset) if from_offset is not None else LogOffset(0, 0)
        for number, path, size in snapshot:
            if number < start.segment or size == 0:
                continue
            skip = start.line if number == start.segment else 0
            line_no, pos0 = -1, 0
            hint = self._resume.get(number)
            if hint is not None and 0 < hint[0] <= skip and hint[1] <= size:
                line_no, pos0 = hint[0] - 1, hint[1]
            last = None
            try:
                for raw, terminated, end in _iter_raw_lines(path, size, pos0):
                    line_no += 1
                    if line_no < skip:
                        continue
                    obj = decode_line(raw) if terminated else None
                    if obj is None:
                        raise CorruptFile(f"event log {path}: line {line_no + 1} is corrupt (changed after it was written)")
                    last = (line_no + 1, end)
                    yield LogRecord(LogOffset(number, line_no), event_from_dict(obj))
            finally:
                if last is not None:
                    self._resume[number] = last

    def iter_events(self, from_offset: LogOffset | tuple[int, int] | None = None) -> Iterator[LogRecord]:
        """Same as ``read``: ``for offset, event in log.iter_events(): ...``."""
        return self.read(from_offset)

    # ------------------------------------------------------------------ state

    def __contains__(self, event_id: object) -> bool:
        with self._lock:
            return event_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return sum(s.lines for s in self._segments)

    def end_offset(self) -> LogOffset:
        """The offset the next appended record will get (if no segment roll happens)."""
        with self._lock:
            if not self._segments:
                return LogOffset(1, 0)
            tail = self._segments[-1]
            return LogOffset(tail.number, tail.lines)

    def segments(self) -> list[Path]:
        with self._lock:
            return [s.path for s in self._segments]

    @property
    def closed(self) -> bool:
        return self._closed

    def writable(self) -> bool:
        """Open for writing, and the directory and tail segment still exist and are writable."""
        with self._lock:
            if self._closed or self.readonly or self._fd is None or not self._segments:
                return False
            tail = self._segments[-1].path
            return tail.exists() and os.access(self.root, os.W_OK) and os.access(tail, os.W_OK)


# ---------------------------------------------------------------------- background writer


# ---------------------------------------------------------------------- worker partitions
_PART_RE = re.compile(r"^w(\d+)$")


def partition_roots(root: str | Path) -> list[Path]:
    """The log folders of a serving events directory: ``root`` itself (a single-process
    server writes there) and each worker partition ``root/w0``, ``root/w1``, ...
    (``serving.workers`` > 1, see serving/workers.py), those that exist, root first."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"event log not found: {root}")
    parts = sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _PART_RE.match(p.name)))
    has_own = any(_SEG_RE.match(p.name) for p in root.iterdir())
    return ([root] if has_own or not parts else []) + [p for _, p in parts]


def read_partitions(root: str | Path) -> Iterator[Event]:
    """Every event in ``root`` and its worker partitions (read-only), each ``event_id``
    once: dedupe is per partition when written, so a client retry that reached two
    workers is dropped here (the first partition's copy is kept)."""
    seen: set[str] = set()
    for path in partition_roots(root):
        with EventLog(path, readonly=True) as log:
            for rec in log.read():
                if rec.event.event_id not in seen:
                    seen.add(rec.event.event_id)
                    yield rec.event
