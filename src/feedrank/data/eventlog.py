"""The durable, append-only event log (embedded backend).

    log = EventLog(Path("run/events"))
    res = log.append(events)            # durable (fsync'd) when this returns
    for rec in log.read(from_offset=LogOffset(1, 0)):
        rec.offset, rec.event

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
* Idempotent by ``event_id``: an id already in the log (from this process or an earlier
  one; the id set is rebuilt by scanning segments on open) or repeated within the batch
  is reported in ``duplicates`` and not written again.
* On open, a torn tail of the last segment (a crash mid-write) is truncated and logged;
  a bad line followed by good lines (corruption, not a crash) raises ``CorruptFile``
  naming the segment and line.
* One writer per directory (an ``flock`` on ``root/LOCK``); any number of
  ``EventLog(root, readonly=True)`` readers, which never repair anything. A reader
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

import numpy as np

from feedrank.data.events import columns_from_dicts, event_from_dict
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
from feedrank.errors import CorruptFile, FeedrankError, SchemaError
from feedrank.types import Event

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SEGMENT_BYTES", "AppendResult", "EventLog", "LogBatch", "LogOffset", "LogRecord", "decode_line", "encode_line",
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
        self._damage: tuple[int, str] | None = None  # readers: (segment, message) of corruption found
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

    def _scan(self) -> None:
        files = segment_files(self.root)
        for i, (number, path) in enumerate(files):
            self._segments.append(self._scan_segment(number, path, i == len(files) - 1))
            if self._damage is not None:  # readers stop at the first damaged segment
                return

    def _scan_segment(self, number: int, path: Path, last: bool, pos: int = 0, lines: int = 0) -> _Segment:
        """Check (and, for a writer, repair) one segment from byte ``pos`` (line ``lines``),
        remembering its event ids; the segment's committed extent."""
        good_end = pos
        bad: tuple[int, int] | None = None  # (1-based line, byte position)
        for raw, terminated, end in _iter_raw_lines(path, None, pos):
            eid = line_event_id(raw) if terminated else None  # CRC-checked; read() decodes the rest
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
            self._ids.add(eid)
            lines += 1
            good_end = end
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
        """Readers of a live log: pick up the segments and lines the writer committed since
        the last look. Incremental: a segment before the tail never changes, so only the
        last known segment (from its committed end) and new segments are scanned; a
        segment that shrank (a writer rolled back a failed fsync) triggers a full rescan."""
        files = segment_files(self.root)
        known = {s.number: s for s in self._segments}
        present = dict(files)
        if self._damage is not None or any(s.number not in present or s.path.stat().st_size < s.size
                                           for s in self._segments):
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
                self._segments[-1] = self._scan_segment(number, path, last, old.size, old.lines)
            else:
                self._segments.append(self._scan_segment(number, path, last))
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
        left = -1 if limit is None else int(limit)
        if left == 0:
            return
        objs: list[dict] = []
        segs: list[np.ndarray] = []
        nums: list[np.ndarray] = []
        runs = self._scan_runs(from_offset, min(batch_size, left) if left > 0 else batch_size)
        try:
            for number, first, run, ends in runs:
                while run:
                    k = min(len(run), batch_size - len(objs), left if left > 0 else len(run))
                    objs += run[:k]
                    segs.append(np.full(k, number, dtype=np.int64))
                    nums.append(np.arange(first, first + k, dtype=np.int64))
                    self._resume[number] = (first + k, ends[k - 1])
                    run, ends, first = run[k:], ends[k:], first + k
                    left -= k if left > 0 else 0
                    if len(objs) >= batch_size or left == 0:
                        yield from _batches(segs, nums, objs)
                        objs, segs, nums = [], [], []
                        if left == 0:
                            return
        except CorruptFile:
            if objs:
                yield from _batches(segs, nums, objs)
            raise
        finally:
            runs.close()
        if objs:
            yield from _batches(segs, nums, objs)

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
            damage = self._damage
        start = LogOffset(*from_offset) if from_offset is not None else LogOffset(0, 0)
        for number, path, size in snapshot:
            if number < start.segment or size == 0:
                if damage is not None and damage[0] == number and number >= start.segment:
                    raise CorruptFile(damage[1])
                continue
            skip = start.line if number == start.segment else 0
            line_no, pos0 = -1, 0
            hint = self._resume.get(number)
            if hint is not None and 0 < hint[0] <= skip and hint[1] <= size:
                line_no, pos0 = hint[0] - 1, hint[1]
            raws: list[bytes] = []
            ends: list[int] = []
            first = -1
            torn = False
            for raw, terminated, end in _iter_raw_lines(path, size, pos0):
                line_no += 1
                if line_no < skip:
                    continue
                if not raws:
                    first = line_no
                raws.append(raw)
                ends.append(end)
                if not terminated:
                    torn = True
                    break
                if len(raws) >= run:
                    yield from _run(path, number, first, raws, ends, torn)
                    raws, ends = [], []
            if raws:
                yield from _run(path, number, first, raws, ends, torn)
            if damage is not None and damage[0] == number:
                raise CorruptFile(damage[1])

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


def _run(path: Path, number: int, first: int, raws: list[bytes], ends: list[int],
         torn: bool) -> Iterator[tuple[int, int, list[dict], list[int]]]:
    """One run of ``_scan_runs``: the event dicts of consecutive lines from line ``first``;
    at a corrupt one (or the last, ``torn``: not terminated) a run of the ones before it,
    then ``CorruptFile``."""
    objs = [decode_line(r) for r in raws]
    if torn:
        objs[-1] = None
    if None in objs:
        k = objs.index(None)
        if k:
            yield number, first, objs[:k], ends[:k]  # type: ignore[misc]
        raise CorruptFile(f"event log {path}: line {first + k + 1} is corrupt (changed after it was written)")
    yield number, first, objs, ends  # type: ignore[misc]


def _batches(segs: list[np.ndarray], lines: list[np.ndarray], objs: list[dict]) -> Iterator[LogBatch]:
    """The ``LogBatch`` of decoded lines; for a record that is not a stored event, a batch
    of the records before it (applied, as ``read`` would have), then its ``SchemaError``."""
    seg, line = np.concatenate(segs), np.concatenate(lines)
    try:
        batch = LogBatch(seg, line, columns_from_dicts(objs))
    except SchemaError as exc:
        k = int(getattr(exc, "record", 0))
        if k > 0:
            yield from _batches([seg[:k]], [line[:k]], objs[:k])
        raise
    yield batch


# worker partitions (``root/w0``, ``root/w1``, ...) and readers over all of them: data/partitions.py
from feedrank.data.partitions import partition_roots, read_partitions  # noqa: E402  (re-exported)
