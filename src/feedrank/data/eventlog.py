"""The durable, append-only event log (embedded backend).

    log = EventLog(Path("run/events"))
    res = log.append(events)            # durable (fsync'd) when this returns
    for rec in log.read(from_offset=LogOffset(1, 0)):
        rec.offset, rec.event
    for batch in log.read_batches(LogOffset(1, 0), 1024):   # the same as columns (data/logread.py)
        batch.events, batch.end()                          # EventColumns; where to resume

Layout: ``root/seg-000001.jsonl``, ``seg-000002.jsonl``, ... Each line is one JSON
object ``{"crc":"<8 hex>","e":{...event...}}`` where ``crc`` is the CRC32 of the exact
bytes of the ``e`` value, so a torn or corrupted line is detected without re-encoding
(the format: data/logformat.py; worker partitions and readers over all of them:
data/partitions.py).

Guarantees:

* ``append`` writes every new event of the batch, then fsyncs once, then returns. An
  event in ``AppendResult.accepted`` survives a crash (``kill -9``) of the process.
  Group commit: appends from concurrent threads that wait for an fsync at the same time
  share one (the first becomes the leader and syncs everything written so far), so N
  concurrent writers cost ~1 fsync per round, not N. A lone writer still does exactly
  one fsync per batch. If an fsync fails, every batch not yet durable fails (OSError),
  is truncated away and its ids are forgotten. An append whose events duplicate a batch
  still awaiting its fsync returns only after that fsync (and fails with it).
* Idempotent by ``event_id``: an id among the newest ``id_window`` ids of the log (from
  this process or an earlier one; rebuilt by scanning segments on open; default
  500,000 impressions and 500,000 other events, ``data/idwindow.py``) or repeated within
  the batch is reported in ``duplicates`` and not written again. The windows bound the
  writer's memory (~160 bytes an id); a retry of anything older is written again. At 300
  feeds/s on two workers the impression window spans ~2.5 minutes of a worker's feeds; the
  other events' (clients' clicks, dwell, hides, ~1-3% of the volume) hours.
* On open, a torn tail of the last segment (a crash mid-write) is truncated and logged;
  a bad line followed by good lines (corruption, not a crash) raises ``CorruptFile``
  naming the segment and line.
* One writer per directory (an ``flock`` on ``root/LOCK``); any number of
  ``EventLog(root, readonly=True)`` readers, which never repair anything and keep no
  event ids (``event_id in reader`` scans the segments). A reader
  refreshes incrementally on each ``read`` (only the tail segment's new bytes and new
  segments are scanned). A reader that finds a corrupt line reads every record before
  it, then ``read`` raises ``CorruptFile`` naming the segment and line. A reader sees
  lines as soon as they are written, before their fsync: a batch whose fsync then fails
  may have been read (its append failed; a client retry is deduplicated by event id).
* Thread-safe: one lock around appends; readers see only fully committed batches.

``data.impressions.ImpressionWriter`` batches server-generated impressions onto a log
from a background thread (bounded buffer, ``submit`` never blocks; flushed on ``close``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from feedrank.data.events import event_from_dict
from feedrank.data.groupcommit import GroupCommit
from feedrank.data.idwindow import DEFAULT_ID_WINDOW, IMPRESSION_MARK, EventIds
from feedrank.data.logformat import (
    DEFAULT_SEGMENT_BYTES,
    AppendResult,
    LogBatch,
    LogOffset,
    LogRecord,
    decode_line,
    encode_line,
    line_event_id,
    fsync_dir,
    segment_files,
    segment_name,
)
from feedrank.data.logformat import iter_raw_lines as _iter_raw_lines  # a module global: tests spy on it
from feedrank.data.logread import batches_from_runs, decode_run
from feedrank.errors import CorruptFile, FeedrankError
from feedrank.types import Event, EventKind

log = logging.getLogger(__name__)
FRESH_BYTES = 8 << 20  # readers keep at most this much of a refresh's checked lines (the newest segment's) for the next read

__all__ = ["DEFAULT_SEGMENT_BYTES", "AppendResult", "EventLog", "LogBatch", "LogOffset", "LogRecord", "decode_line",
           "encode_line",
           "partition_roots", "read_partitions", "segment_name"]


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


class EventLog(GroupCommit):
    """Append-only, fsync'd, idempotent event log in ``root`` (see module docstring)."""

    def __init__(self, root: str | Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES, *, readonly: bool = False,
                 id_window: int = DEFAULT_ID_WINDOW) -> None:
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be >= 1")
        self.root = Path(root)
        self.segment_bytes = int(segment_bytes)
        self.readonly = readonly
        self._lock = threading.RLock()
        # a writer's newest event ids (idempotent appends), impressions apart; readers keep none
        self._ids = EventIds(id_window)
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self.repaired_bytes = 0  # torn-tail bytes removed on open
        self._damage: tuple[int, str] | None = None  # readers: (segment, message) of corruption found
        # readers: segment -> (line, byte position where it starts), so a consumer resuming
        # mid-segment seeks there instead of re-reading the segment from its start
        self._resume: dict[int, tuple[int, int]] = {}
        # readers: segment -> (first line, lines, end byte of each) checked by the last refresh,
        # so the read that follows decodes them without reading and CRC-checking them again
        self._fresh: dict[int, tuple[int, list[bytes], list[int]]] = {}
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

    def _scan(self) -> None:
        files = segment_files(self.root)
        for i, (number, path) in enumerate(files):
            self._segments.append(self._scan_segment(number, path, i == len(files) - 1))
            if self._damage is not None:  # readers stop at the first damaged segment
                return

    def _scan_segment(self, number: int, path: Path, last: bool, pos: int = 0, lines: int = 0,
                      keep: bool = False) -> _Segment:
        """Check (and, for a writer, repair) one segment from byte ``pos`` (line ``lines``),
        a writer remembering its event ids; the segment's committed extent. ``keep`` (a reader's
        refresh): the checked lines stay in ``_fresh`` for the ``read`` that follows."""
        good_end = pos
        bad: tuple[int, int] | None = None  # (1-based line, byte position)
        raws: list[bytes] = []
        ends: list[int] = []
        first = lines
        reader = self.readonly
        for raw, terminated, end in _iter_raw_lines(path, None, pos):
            # CRC-checked, with an id (read() decodes the rest); a reader checks the same but keeps no ids
            eid = line_event_id(raw) if terminated else None
            if eid is None:
                if bad is None:
                    bad = (lines + 1, good_end)
                continue
            if bad is not None:
                msg = (f"event log {path}: line {bad[0]} is corrupt (CRC or JSON check failed) "
                       f"but later lines are intact; this is not a torn write: restore the "
                       f"segment from a backup or move it aside")
                if self.readonly:  # a reader reads up to the damage, then read() raises
                    self._damage = (number, msg)
                    return _Segment(number, path, bad[1], bad[0] - 1)
                raise CorruptFile(msg)
            if not reader:
                self._ids.add(eid, IMPRESSION_MARK in raw)
            lines += 1
            good_end = end
            if keep:
                raws.append(raw)
                ends.append(end)
                if end - pos > FRESH_BYTES:
                    keep = False
                    raws, ends = [], []
        if keep and raws:
            self._fresh[number] = (first, raws, ends)
        size = path.stat().st_size
        if bad is not None or good_end != size:
            if not last:
                msg = (f"event log {path}: line {bad[0] if bad else lines + 1} is torn or corrupt "
                       f"and this is not the last segment")
                if self.readonly:
                    self._damage = (number, msg)
                    return _Segment(number, path, good_end, lines)
                raise CorruptFile(msg)
            if not self.readonly:  # a reader leaves it: a writer may be mid-append
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
        return _Segment(number, path, good_end, lines)

    def _open_tail(self) -> None:
        if not self._segments:
            self._new_segment(1)
        else:
            tail = self._segments[-1]
            self._fd = os.open(tail.path, os.O_WRONLY | os.O_APPEND)

    def _new_segment(self, number: int) -> None:
        path = self.root / segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        fsync_dir(self.root)
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
            impression: list[bool] = []
            for ev in events:
                eid = ev.event_id
                if eid in self._ids or eid in seen:
                    duplicates.append(eid)
                    continue
                seen.add(eid)
                accepted.append(eid)
                impression.append(ev.kind is EventKind.IMPRESSION)
                parts.append(encode_line(ev))
            # a duplicate of a batch still awaiting its fsync is only "in the log" once that
            # fsync is done: wait for it too (and fail with it)
            dup_wait = self._write_seq if duplicates and self._pending else 0
            if not parts:
                seq = dup_wait
            else:
                seq = self._write_batch(parts, accepted, impression)
        if seq:
            self._wait_durable(seq)
        return AppendResult(accepted, duplicates)

    def _write_batch(self, parts: list[bytes], accepted: list[str], impression: list[bool]) -> int:
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
        self._ids.update(accepted, impression)
        self._write_seq += 1
        self._pending.append((self._write_seq, accepted))
        return self._write_seq

    # ------------------------------------------------------------------ reading

    def _refresh_readonly(self) -> None:
        """Readers of a live log: pick up the segments and lines the writer committed since
        the last look. Incremental: a segment before the tail never changes, so only the
        last known segment (from its committed end) and new segments are scanned; a
        segment that shrank (a writer rolled back a failed fsync) triggers a full rescan."""
        self._fresh = {}
        files = segment_files(self.root)
        known = {s.number: s for s in self._segments}
        present = dict(files)
        sizes = {s.number: s.path.stat().st_size for s in self._segments if s.number in present}
        if self._damage is not None or any(s.number not in sizes or sizes[s.number] < s.size for s in self._segments):
            self._damage = None
            self._ids.clear()
            self._segments.clear()
            self._scan()
            return
        tail = self._segments[-1].number if self._segments else 0
        for i, (number, path) in enumerate(files):
            last = i == len(files) - 1
            if number < tail:
                continue
            if number == tail:
                old = known[number]
                if sizes[number] == old.size:  # nothing written since (it ends on a line boundary)
                    continue
                self._segments[-1] = self._scan_segment(number, path, last, old.size, old.lines, keep=last)
            else:  # only the newest segment's checked lines are kept: a backlog of many is not held in memory
                self._segments.append(self._scan_segment(number, path, last, keep=last))
            if self._damage is not None:
                return

    def read(self, from_offset: LogOffset | tuple[int, int] | None = None) -> Iterator[LogRecord]:
        """Records at or after ``from_offset`` (default: the beginning), in log order.

        Only batches committed before the call are read. To resume after a record
        ``rec``, pass ``rec.offset.next()``.
        """
        runs = self._scan_runs(from_offset)
        try:
            for number, first, objs, ends in runs:
                for k, obj in enumerate(objs):
                    self._resume[number] = (first + k + 1, ends[k])  # a later read from here seeks
                    yield LogRecord(LogOffset(number, first + k), event_from_dict(obj))
        finally:
            runs.close()

    def read_batches(self, from_offset: LogOffset | tuple[int, int] | None = None, batch_size: int = 1024,
                     limit: int | None = None) -> Iterator[LogBatch]:
        """``read`` as columns: ``LogBatch``es of ``batch_size`` records (the last one may
        be shorter), at most ``limit`` records in all, without an ``Event`` per record.

        A corrupt line, or a record that is not a stored event, ends the read as in
        ``read``: the records before it come in a last batch, then ``CorruptFile`` /
        ``SchemaError`` is raised."""
        if batch_size < 1 or (limit is not None and limit < 0):
            raise ValueError(f"batch_size must be >= 1 and limit >= 0, got {batch_size} and {limit}")
        if limit == 0:
            return
        run = batch_size if limit is None else min(batch_size, limit)
        yield from batches_from_runs(self._scan_runs(from_offset, run), batch_size, limit, self._resume)

    def _scan_runs(self, from_offset: LogOffset | tuple[int, int] | None,
                   run: int = 256) -> Iterator[tuple[int, int, list[dict], list[int]]]:
        """Runs of up to ``run`` committed records at or after ``from_offset``, CRC-checked
        and decoded: ``(segment, first line, event dicts, end byte of each line)``; the one
        reading rule of ``read`` and ``read_batches``. A corrupt line raises ``CorruptFile``
        after a run of the lines before it."""
        with self._lock:
            if self.readonly:
                self._refresh_readonly()
            snapshot = [(s.number, s.path, s.size) for s in self._segments]
            damage, fresh = self._damage, self._fresh
        start = LogOffset(*from_offset) if from_offset is not None else LogOffset(0, 0)
        for number, path, size in snapshot:
            if number < start.segment or size == 0:
                if damage is not None and damage[0] == number and number >= start.segment:
                    raise CorruptFile(damage[1])
                continue
            skip = start.line if number == start.segment else 0
            got = fresh.get(number)
            if got is not None and got[0] <= skip <= got[0] + len(got[1]) and got[2][-1] == size:
                k = skip - got[0]  # the refresh just checked these lines: decode them
                fresh.pop(number, None)  # once: not kept alive until the next refresh
                for j in range(k, len(got[1]), run):
                    yield from decode_run(path, number, got[0] + j, got[1][j:j + run], got[2][j:j + run], False,
                                    checked=True)
                if damage is not None and damage[0] == number:
                    raise CorruptFile(damage[1])
                continue
            line_no, pos0 = -1, 0
            hint = self._resume.get(number)
            if hint is not None and 0 < hint[0] <= skip and hint[1] <= size:
                line_no, pos0 = hint[0] - 1, hint[1]
            raws: list[bytes] = []
            ends: list[int] = []
            first = -1
            torn = False
            for raw, terminated, end in _iter_raw_lines(path, size, pos0) if pos0 < size else ():
                line_no += 1
                if line_no < skip:
                    if line_no == skip - 1 and terminated:  # the next read from ``skip`` seeks here
                        self._resume[number] = (skip, end)
                    continue
                if not raws:
                    first = line_no
                raws.append(raw)
                ends.append(end)
                if not terminated:
                    torn = True
                    break
                if len(raws) >= run:
                    yield from decode_run(path, number, first, raws, ends, torn)
                    raws, ends = [], []
            if raws:
                yield from decode_run(path, number, first, raws, ends, torn)
            if damage is not None and damage[0] == number:
                raise CorruptFile(damage[1])

    def iter_events(self, from_offset: LogOffset | tuple[int, int] | None = None) -> Iterator[LogRecord]:
        """Same as ``read``: ``for offset, event in log.iter_events(): ...``."""
        return self.read(from_offset)

    # ------------------------------------------------------------------ state

    def __contains__(self, event_id: object) -> bool:
        """Whether the log holds ``event_id``: a writer's id window; a reader (which keeps no
        ids) scans its committed lines, O(log size)."""
        if not self.readonly:
            with self._lock:
                return event_id in self._ids
        with self._lock:
            self._refresh_readonly()
            self._fresh = {}
            snapshot = [(s.path, s.size) for s in self._segments]
        return any(line_event_id(raw) == event_id
                   for path, size in snapshot for raw, terminated, _end in _iter_raw_lines(path, size) if terminated)

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


# worker partitions (``root/w0``, ``root/w1``, ...) and readers over all of them: data/partitions.py
from feedrank.data.partitions import partition_roots, read_partitions  # noqa: E402  (re-exported)
