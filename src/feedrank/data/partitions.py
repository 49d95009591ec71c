"""Reading every worker partition of a serving events folder.

A server with ``serving.workers`` > 1 writes one embedded event log per worker process
(``<events>/w0``, ``<events>/w1``, ...; a log directory has one writer, see
serving/workers.py); a single-process server writes to ``<events>`` itself. Readers must
see all of them:

    for ev in read_partitions("var/events"): ...          # everything, each event_id once

    log = PartitionedLog("var/events")                    # a consumer with its own offsets
    offsets = {}                                          # partition name -> next (segment, line)
    for rec in log.read_parts(offsets):                   # rec.partition, rec.offset, rec.event
        offsets[rec.partition] = rec.offset.next()
    for batch in log.read_batches(offsets, 1024):         # the same as columns (live consumer)
        batch.events; offsets.update(batch.ends)          # EventColumns; partition -> next offset

Partition names: ``""`` for the root folder's own segments, ``"w0"``, ``"w1"``, ... for
the worker folders. ``read_parts`` looks for partitions on every call, so one that
appears later (a worker added) is read from its start. Records of one partition come in
log order; partitions are interleaved by event time (a k-way merge), so a consumer sees
roughly one global time order. ``read_batches`` keeps that order a slice at a time
(data/partmerge.py: every batch is time-sorted, and no partition runs ahead of another
one's unread records), without an ``Event`` per record.

A corrupt record in one partition stops reading *that* partition at that record; the
others are read to their end first, then ``PartitionCorrupt`` names the partition, the
offset and the damage. A consumer that applies what it got before the error loses
nothing from the healthy partitions (features/consumer.py does).

Duplicates: event-id dedupe is per partition when written, so a client retry that
reached two workers is in two partitions. ``read_partitions`` drops the repeat (the first
copy read is kept); ``read_parts`` yields both and leaves dedupe to the sink (the
real-time counters remember recent ids in their checkpoint; offline readers dedupe by
``event_id``).
"""

from __future__ import annotations

import heapq
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, NamedTuple

from feedrank.data.logformat import SEG_RE, LogOffset
from feedrank.data.partmerge import PartBatch, PartitionCorrupt, merge_batches
from feedrank.errors import CorruptFile
from feedrank.types import Event

if TYPE_CHECKING:
    from feedrank.data.eventlog import EventLog

_PART_RE = re.compile(r"^w(\d+)$")
READ_AHEAD = 512  # records read from a partition at a time by ``read_batches`` (its slices may be smaller)
ROOT_PARTITION = ""


class PartRecord(NamedTuple):
    """One record of a partitioned log: which partition, where in it, the event."""

    partition: str
    offset: LogOffset
    event: Event


def partition_name(root: Path, path: Path) -> str:
    return ROOT_PARTITION if path == root else path.name


def partition_roots(root: str | Path) -> list[Path]:
    """The log folders of a serving events directory: ``root`` itself (a single-process
    server writes there) and each worker partition ``root/w0``, ``root/w1``, ...
    (``serving.workers`` > 1, see serving/workers.py), those that exist, root first."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"event log not found: {root}")
    parts: list[tuple[int, str]] = []
    has_own = False
    with os.scandir(root) as entries:  # one directory read, d_type instead of a stat per entry (every poll)
        for e in entries:
            m = _PART_RE.match(e.name)
            if m is not None:
                if e.is_dir():
                    parts.append((int(m.group(1)), e.name))
            elif not has_own and SEG_RE.match(e.name):
                has_own = True
    parts.sort()
    return ([root] if has_own or not parts else []) + [root / name for _, name in parts]


def read_partitions(root: str | Path) -> Iterator[Event]:
    """Every event in ``root`` and its worker partitions (read-only), each ``event_id``
    once (``PartitionedLog.read_all``: merged by time, a client retry that reached two
    workers kept once; a corrupt record raises ``PartitionCorrupt`` after the healthy
    partitions are read)."""
    with PartitionedLog(root) as log:
        yield from log.read_all()


class PartitionedLog:
    """All partitions of ``root`` as one source with an offset per partition.

    ``own``: logs this process already has open for writing, by partition name (a
    worker's own partition): read through that object, which sees exactly what it
    committed. Every other partition is opened read-only once and refreshed
    incrementally on each read. Thread-safe for one reader at a time per instance.
    """

    def __init__(self, root: str | Path, own: Mapping[str, "EventLog"] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"event log folder not found: {self.root}")
        self.own = dict(own or {})
        self.primary = next(iter(self.own), ROOT_PARTITION)  # a legacy single-offset checkpoint was of this one
        self._readers: dict[str, "EventLog"] = {}
        self._lock = threading.Lock()

    def partitions(self) -> list[str]:
        """The partition names present now (root first, then w0, w1, ...)."""
        try:
            return [partition_name(self.root, p) for p in partition_roots(self.root)]
        except FileNotFoundError:
            return []

    def open_readers(self) -> int:
        """Open (and so check) a reader on every partition present now that this process does
        not write; returns how many are open. Opening one CRC-checks every line of its segments
        (~10 s of CPU for 1.4 GB on the bench machine), so a server does it while it starts, not in its first
        requests' time; a partition that cannot be opened is left for the read to report."""
        with self._lock:
            for name in self.partitions():
                if name not in self.own and name not in self._readers:
                    try:
                        self._log(name)
                    except (CorruptFile, OSError):  # read_parts / read_batches name it (PartitionCorrupt)
                        continue
            return len(self._readers)

    def _log(self, name: str) -> "EventLog":
        from feedrank.data.eventlog import EventLog

        if name in self.own:
            return self.own[name]
        reader = self._readers.get(name)
        if reader is None:
            reader = self._readers[name] = EventLog(self.root / name if name else self.root, readonly=True)
        return reader

    def _open(self, offsets: Mapping[str, tuple[int, int]], only: Iterable[str] | None,
              errors: list[Exception]) -> list[tuple[str, "EventLog", LogOffset]]:
        """Under ``_lock``: (name, log, start offset) of every partition to read; one that
        cannot be opened goes to ``errors`` as ``PartitionCorrupt``."""
        names = self.partitions()
        for name in self.own:  # an own log with nothing written may have no segment yet
            if name not in names and (self.root / name if name else self.root).is_dir():
                names.append(name)
        if only is not None:
            keep = set(only)
            names = [n for n in names if n in keep]
        out = []
        for name in names:
            start = LogOffset(*offsets.get(name, (0, 0)))
            try:
                out.append((name, self._log(name), start))
            except CorruptFile as exc:
                errors.append(PartitionCorrupt(name, start, str(exc)))
        return out

    def read_parts(self, offsets: Mapping[str, tuple[int, int]] | None = None,
                   only: Iterable[str] | None = None) -> Iterator[PartRecord]:
        """Records after each partition's offset (absent: from its start), interleaved by
        event time; ``only``: just these partitions. Raises ``PartitionCorrupt`` after the
        healthy partitions are read."""
        errors: list[Exception] = []
        with self._lock:
            opened = self._open(offsets or {}, only, errors)
            streams = [self._stream(name, log, start, errors) for name, log, start in opened]
        yield from heapq.merge(*streams, key=lambda r: r.event.ts)
        if errors:
            raise errors[0]

    def read_batches(self, offsets: Mapping[str, tuple[int, int]] | None = None, batch_size: int = 1024,
                     limit: int | None = None, only: Iterable[str] | None = None) -> Iterator[PartBatch]:
        """``read_parts`` as columns (the live consumer's path): ``PartBatch``es of
        ``batch_size`` records (the last may be shorter), at most ``limit`` in all. Each
        batch takes a prefix of every partition (``ends``: where each resumes) and is in
        time order across them: merged a slice at a time (data/partmerge.py), so a
        partition is never read ahead of the others by more than one slice. A corrupt
        record stops its partition; the error is raised after the others are read."""
        if batch_size < 1 or (limit is not None and limit < 0):
            raise ValueError(f"batch_size must be >= 1 and limit >= 0, got {batch_size} and {limit}")
        errors: list[Exception] = []
        with self._lock:
            opened = self._open(offsets or {}, only, errors)
        # read ahead a little more than a slice per partition (fewer, larger reads); not past ``limit``
        ahead = max(batch_size, READ_AHEAD) if limit is None else batch_size
        yield from merge_batches([(name, log.read_batches(start, ahead), start) for name, log, start in opened],
                                 batch_size, limit, errors)
        if errors:
            raise errors[0]

    @staticmethod
    def _stream(name: str, log: "EventLog", start: LogOffset, errors: list[Exception]) -> Iterator[PartRecord]:
        at = start
        try:
            for rec in log.read(start):
                yield PartRecord(name, rec.offset, rec.event)
                at = rec.offset.next()
        except CorruptFile as exc:
            errors.append(PartitionCorrupt(name, at, str(exc)))

    def read_all(self) -> Iterator[Event]:
        """Every event of every partition, each ``event_id`` once (first copy kept)."""
        seen: set[str] = set()
        for rec in self.read_parts():
            if rec.event.event_id not in seen:
                seen.add(rec.event.event_id)
                yield rec.event

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def __enter__(self) -> "PartitionedLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
