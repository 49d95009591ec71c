"""Merging worker partitions a slice at a time, as columns (``PartitionedLog.read_batches``).

    for batch in merge_batches([(name, log.read_batches(start, 1024), start), ...], 1024, None, errors):
        batch.events          # EventColumns, in time order across the partitions
        batch.ends            # {partition: LogOffset}: where each partition resumes after it

``read_parts`` merges records one at a time (``heapq.merge`` by event time). Here each
partition is read ahead into a buffer (the caller's read size, at least a slice), and a
step takes, from every buffer, the records up to a watermark ``T``: the smallest "newest
time read so far" (running maximum of ``ts``) among the partitions that still have
unread records. No record after ``T`` of any partition is taken before every other
partition has been read past ``T``: the same global order a k-way merge gives, up to
ties at slice boundaries, for partitions whose records are in time order (a serving
worker's are, nearly), so no partition's records are applied ahead of another's
unread ones (the real-time windows would count those as late). The records taken
are sorted by that running maximum (stable: a partition's records keep their log order,
ties go to the earlier partition, as in ``heapq.merge``), so what a batch takes from a
partition is always a prefix of it, and ``ends`` is exact.

A partition whose read fails (``CorruptFile``, or a record that is not a stored event)
stops at the failing record: the records before it are merged as usual, the error goes
to ``errors`` (``PartitionCorrupt`` for a corrupt record) and the caller raises it after
the healthy partitions are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from feedrank.data.logformat import LogBatch, LogOffset
from feedrank.errors import CorruptFile, SchemaError
from feedrank.types import EventColumns


class PartitionCorrupt(CorruptFile):
    """A record of one partition cannot be read; the other partitions were read."""

    def __init__(self, partition: str, offset: LogOffset, detail: str) -> None:
        self.partition, self.offset, self.detail = partition, offset, detail
        name = partition or "(root)"
        super().__init__(f"event log partition {name!r}: cannot read the record at offset (segment {offset.segment}, "
                         f"line {offset.line}); that partition stops there, the others were read: {detail}")


@dataclass(frozen=True)
class PartBatch:
    """Records of several partitions as columns: ``ends`` names every partition with
    records in the batch and the offset it resumes at (the batch holds a prefix of each)."""

    events: EventColumns
    ends: dict[str, LogOffset]

    def __len__(self) -> int:
        return len(self.events)


def take_columns(cols: EventColumns, order: np.ndarray) -> EventColumns:
    """The records of ``cols`` at positions ``order``."""
    idx = order.tolist()
    return EventColumns(list(map(cols.event_id.__getitem__, idx)), cols.ts[order], list(map(cols.user_id.__getitem__, idx)),
                        list(map(cols.item_id.__getitem__, idx)), cols.kind[order])


def _slice(cols: EventColumns, a: int, b: int | None) -> EventColumns:
    return EventColumns(cols.event_id[a:b], cols.ts[a:b], cols.user_id[a:b], cols.item_id[a:b], cols.kind[a:b])


class _Buffer:
    """One partition's records read ahead; those before ``pos`` are taken."""

    def __init__(self, name: str, batches: Iterator[LogBatch], start: LogOffset, errors: list[Exception]) -> None:
        self.name, self.batches, self.errors = name, batches, errors
        self.read_to = start            # offset after the last record read (where an error is)
        self.done = False               # nothing more to read (end of the log, or an error)
        self.cols: EventColumns | None = None
        self.seg = self.line = self.top = np.zeros(0)
        self.pos = 0
        self.n = 0                      # records not taken

    @property
    def keys(self) -> np.ndarray:
        """Merge keys of the records not taken: running max of ``ts`` (non-decreasing)."""
        return self.top[self.pos:]

    def fill(self, want: int) -> None:
        """Read until ``want`` records are buffered or the partition is done."""
        got: list[LogBatch] = []
        have = self.n
        while have < want and not self.done:
            try:
                b = next(self.batches)
            except StopIteration:
                self.done = True
            except CorruptFile as exc:
                self.done = True
                err = exc if isinstance(exc, PartitionCorrupt) else PartitionCorrupt(self.name, self.read_to, str(exc))
                self.errors.append(err)
            except SchemaError as exc:
                self.done = True
                self.errors.append(PartitionCorrupt(self.name, self.read_to, str(exc)))
            else:
                if len(b):
                    got.append(b)
                    have += len(b)
                    self.read_to = b.end()
        if not got:
            return
        rest = self.n > 0 and self.cols is not None
        p = self.pos
        old = [_slice(self.cols, p, None)] if rest and self.cols is not None else []
        self.cols = EventColumns.concat(old + [b.events for b in got])
        self.seg = np.concatenate(([self.seg[p:]] if rest else []) + [b.segment for b in got])
        self.line = np.concatenate(([self.line[p:]] if rest else []) + [b.line for b in got])
        # merge keys: the running max of the times (module docstring); recomputed over the
        # untaken records, so after a limit cut a late record may sort before keys already
        # emitted (order only; offsets stay exact)
        self.top = np.maximum.accumulate(self.cols.ts)
        self.pos, self.n = 0, len(self.cols)

    def take(self, k: int) -> tuple[EventColumns, np.ndarray, LogOffset]:
        """The first ``k`` records not taken, their merge keys, and where the partition resumes."""
        assert self.cols is not None and 0 < k <= self.n
        p, q = self.pos, self.pos + k
        head, keys = _slice(self.cols, p, q), self.top[p:q]
        end = LogOffset(int(self.seg[q - 1]), int(self.line[q - 1]) + 1)
        self.pos, self.n = q, self.n - k
        return head, keys, end

    def close(self) -> None:
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()


def merge_batches(streams: list[tuple[str, Iterator[LogBatch], LogOffset]], batch_size: int, limit: int | None,
                  errors: list[Exception]) -> Iterator[PartBatch]:
    """``PartBatch``es of ``batch_size`` records (the last may be shorter; at most
    ``limit`` in all) merged from each partition's ``LogBatch`` stream (module docstring);
    read errors go to ``errors``."""
    bufs = [_Buffer(name, it, start, errors) for name, it, start in streams]
    left = -1 if limit is None else int(limit)
    try:
        pieces: list[EventColumns] = []
        ends: dict[str, LogOffset] = {}
        have = 0
        while left != 0:
            for b in bufs:
                b.fill(batch_size)
            live = [b for b in bufs if b.n]
            if not live:
                break
            bounds = [b.top[-1] for b in live if not b.done]  # the last key of what is buffered
            cut = min(bounds) if bounds else np.inf
            room = batch_size - have if left < 0 else min(batch_size - have, left)
            ks = [b.n if cut >= b.top[-1] else int(b.keys.searchsorted(cut, "right")) for b in live]
            if len(live) == 1:
                ks = [min(ks[0], room)]
                col, _keys, end = live[0].take(ks[0])
                piece = col
                ends[live[0].name] = end
            else:
                if sum(ks) > room:  # the first ``room`` in merge order: still a prefix of each partition
                    keys = np.concatenate([b.keys[:k] for b, k in zip(live, ks)])
                    src = np.repeat(np.arange(len(live)), ks)
                    first = np.argsort(keys, kind="stable")[:room]
                    ks = np.bincount(src[first], minlength=len(live)).tolist()
                taken = [(b, b.take(k)) for b, k in zip(live, ks) if k]
                for b, (_c, _k, end) in taken:
                    ends[b.name] = end
                if len(taken) == 1:
                    piece = taken[0][1][0]
                else:
                    merged = EventColumns.concat([t[0] for _b, t in taken])
                    order = np.argsort(np.concatenate([t[1] for _b, t in taken]), kind="stable")
                    piece = take_columns(merged, order)
            pieces.append(piece)
            have += len(piece)
            if left > 0:
                left -= len(piece)
            if have >= batch_size or left == 0:
                yield PartBatch(EventColumns.concat(pieces), ends)
                pieces, ends, have = [], {}, 0
        if have:
            yield PartBatch(EventColumns.concat(pieces), ends)
    finally:
        for b in bufs:
            b.close()
