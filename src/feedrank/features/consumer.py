"""Event-log consumers with their own committed offsets (exactly-once for checkpointed sinks).

    consumer = LogConsumer(event_log, rt, Path("var/consumers/realtime.ckpt.npz"))
    consumer.poll()                 # read new records, apply them, heartbeat, maybe commit
    consumer.start(interval_s=0.1)  # or poll in a background thread; consumer.stop() commits

    # every worker partition of a multi-worker server's events folder, an offset each
    consumer = LogConsumer(PartitionedLog("var/events"), rt, Path("var/consumers/rt.npz"))

A consumer reads one of two kinds of source:

* an ``EventSource``: ``read(from_offset)`` yields ``(offset, event)`` pairs in log order,
  where ``offset`` is a ``(segment, line)`` tuple (``data.eventlog.EventLog``, and
  ``data.streams.RedisEventLog`` with ``(ms, seq)`` stream ids, fit). The consumer keeps
  one offset: the *next* record to read, ``(segment, line + 1)`` after the last applied.
* a ``PartitionedSource``: ``read_parts(offsets)`` yields ``(partition, offset, event)``
  for every partition after its offset in ``offsets`` (``data.partitions.PartitionedLog``:
  the worker partitions ``w0``, ``w1``, ... of a serving events folder). The consumer keeps
  one offset per partition; a partition that appears later starts at its beginning.

Commit = one file written atomically (tmp, fsync, rename) holding the sink's state and the
offset(s) together, so after a crash the consumer restarts from a state and offsets that
match: no event is counted twice or lost. Sinks that cannot checkpoint (e.g. a Redis
store) rely on the sink's dedupe by event id (``RealtimeFeatures`` remembers recent ids).
The same dedupe drops an event that is in two partitions (a client retry that reached two
workers): the ids it remembers are part of its checkpointed state.

If the source fails mid-read (e.g. ``data.partitions.PartitionCorrupt``: one partition
has a corrupt record), the records read before the failure are applied and their offsets
kept, then the error is raised: the healthy partitions keep progressing on every poll.

Columns end to end: when the source also has ``read_batches`` (``EventLog``: batches with
an ``end()`` offset; ``PartitionedLog``: batches with ``ends`` per partition) and the sink
``apply_columns`` (``RealtimeFeatures``, ``StorePublisher``), records travel as
``types.EventColumns``, without an ``Event`` each. Batches, yields, offsets and commits
are the same as record by record (``poll`` picks the path; ``columnar`` says which).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Protocol

import numpy as np

from feedrank.types import Event, EventColumns

log = logging.getLogger(__name__)

Offset = tuple[int, int]
SINGLE = ""  # the partition name of a single-log source
ERROR_LOG_EVERY_S = 60.0  # a poll error that repeats is logged at most this often
YIELD_EVERY = 64  # records between two chances for a waiting foreground thread to take the GIL
YIELD_SLEEP_S = 0.0005  # while the foreground is busy, re-check this often
MAX_YIELD_S = 0.005  # the longest one wait for the foreground (~ a request): progress under overload


class EventSource(Protocol):
    def read(self, from_offset: Offset | None = None) -> Iterable[tuple[Offset, Event]]: ...


class PartitionedSource(Protocol):
    def read_parts(self, offsets: Mapping[str, Offset] | None = None) -> Iterable[tuple[str, Offset, Event]]: ...


class Sink(Protocol):
    def apply(self, events: Iterable[Event]) -> int: ...

    def heartbeat(self, now_wall: float | None = None) -> None: ...

    def state_dict(self) -> Mapping[str, np.ndarray]: ...

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None: ...


class LogConsumer:
    """Tails a source into a ``Sink``; commits state + offset(s) together.

    ``offset`` / ``committed``: a ``(segment, line)`` tuple for a single-log source, a
    ``{partition: (segment, line)}`` dict for a partitioned one."""

    def __init__(self, source: EventSource | PartitionedSource, sink: Sink, checkpoint: str | Path | None, *,
                 batch_size: int = 1024, commit_every_s: float = 5.0, name: str = "consumer",
                 yield_to: Callable[[], bool] | None = None, yield_every: int = YIELD_EVERY,
                 max_yield_s: float = MAX_YIELD_S) -> None:
        if batch_size < 1 or yield_every < 1:
            raise ValueError(f"batch_size and yield_every must be >= 1, got {batch_size} and {yield_every}")
        self.source, self.sink, self.name = source, sink, name
        # a foreground that must not wait for this thread (a serving worker's event loop
        # running a request): between slices of ``yield_every`` records the consumer sleeps
        # while ``yield_to()`` says it is busy, at most ``max_yield_s`` at a time
        self.yield_to, self.yield_every, self.max_yield_s = yield_to, int(yield_every), float(max_yield_s)
        self.yielded_s = 0.0  # time spent waiting for the foreground (stats)
        self.partitioned = callable(getattr(source, "read_parts", None))
        # columns end to end when both sides can (data/partitions.py ``read_batches``,
        # RealtimeFeatures / StorePublisher ``apply_columns``): no ``Event`` per record
        self.columnar = callable(getattr(source, "read_batches", None)) and callable(getattr(sink, "apply_columns", None))
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.batch_size, self.commit_every_s = int(batch_size), float(commit_every_s)
        self.offsets: dict[str, Offset] = {}
        self.committed_offsets: dict[str, Offset] = {}
        self.applied = 0
        self.resumed = False  # state and offsets came from a checkpoint with progress in it
        self._last_commit = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self._last_error: tuple[str, float] = ("", -1e18)
        if self.checkpoint is not None and self.checkpoint.exists():
            self._load()

    # ------------------------------------------------------------------ offsets
    @property
    def offset(self) -> Offset | dict[str, Offset]:
        return dict(self.offsets) if self.partitioned else self.offsets.get(SINGLE, (0, 0))

    @property
    def committed(self) -> Offset | dict[str, Offset]:
        return dict(self.committed_offsets) if self.partitioned else self.committed_offsets.get(SINGLE, (0, 0))

    def offset_json(self, committed: bool = False) -> list[int] | dict[str, list[int]]:
        """The offset(s) as JSON: ``[segment, line]``, or ``{partition: [segment, line]}``."""
        off = self.committed_offsets if committed else self.offsets
        if not self.partitioned:
            return list(off.get(SINGLE, (0, 0)))
        return {p: list(o) for p, o in sorted(off.items())}

    def _load(self) -> None:
        assert self.checkpoint is not None
        with np.load(self.checkpoint, allow_pickle=False) as z:
            state = {k[len("state/") :]: z[k] for k in z.files if k.startswith("state/")}
            if "parts" in z.files:
                if not self.partitioned:
                    raise ValueError(f"consumer checkpoint {self.checkpoint} holds per-partition offsets but "
                                     "this consumer reads a single log")
                names = [str(p) for p in z["parts"].tolist()]
                offs = z["part_offsets"].reshape(-1, 2)
                offsets = {p: (int(o[0]), int(o[1])) for p, o in zip(names, offs.tolist())}
            elif "offset" in z.files:
                off = z["offset"]
                # a single-log checkpoint, e.g. from before partitioned reading: it was of the
                # source's primary partition (a worker's own one)
                key = getattr(self.source, "primary", SINGLE) if self.partitioned else SINGLE
                offsets = {key: (int(off[0]), int(off[1]))}
            else:
                raise ValueError(f"consumer checkpoint {self.checkpoint} has no offset")
        self.sink.load_state_dict(state)
        self.offsets, self.committed_offsets = dict(offsets), dict(offsets)
        self.resumed = any(o != (0, 0) for o in offsets.values())
        log.info("consumer %s: resumed at offset %s from %s", self.name, self.offset_json(), self.checkpoint)

    # ------------------------------------------------------------------ reading
    def _records(self) -> Iterator[tuple[str, Offset, Event]]:
        if self.partitioned:
            yield from self.source.read_parts(dict(self.offsets))  # type: ignore[union-attr]
        else:
            for off, ev in self.source.read(self.offsets.get(SINGLE, (0, 0))):  # type: ignore[union-attr]
                yield SINGLE, off, ev

    def _batches(self, size: int, limit: int | None) -> Iterator[tuple[dict[str, Offset], EventColumns]]:
        """The columnar read: (next offset per partition, records) of ``size`` records."""
        if self.partitioned:
            for b in self.source.read_batches(dict(self.offsets), size, limit):  # type: ignore[union-attr]
                yield b.ends, b.events
        else:
            for b in self.source.read_batches(self.offsets.get(SINGLE, (0, 0)), size, limit):  # type: ignore[union-attr]
                yield {SINGLE: b.end()}, b.events

    def poll(self, max_events: int | None = None) -> int:
        """Apply every record after the offset(s) (at most ``max_events``); returns how many
        records were read. Commits when ``commit_every_s`` has passed. A source error is
        raised after the records read before it are applied."""
        with self._lock:
            n = self._poll_columns(max_events) if self.columnar else self._poll_events(max_events)
            self.sink.heartbeat()
            if self.checkpoint is not None and time.monotonic() - self._last_commit >= self.commit_every_s:
                self._commit()
            return n

    def _poll_columns(self, max_events: int | None) -> int:
        """``poll`` through the source's ``read_batches`` and the sink's ``apply_columns``:
        the same batches, yields and offsets as record by record, without an ``Event`` per
        record. Read in slices of ``gcd(batch_size, yield_every)`` records (with
        ``yield_to``), so both counts fall on slice boundaries."""
        size = math.gcd(self.batch_size, self.yield_every) if self.yield_to is not None else self.batch_size
        n = 0
        pending: list[EventColumns] = []
        have = 0
        nxt: dict[str, Offset] = {}
        batches = self._batches(size, max_events)
        try:
            for ends, cols in batches:
                pending.append(cols)
                nxt.update(ends)
                n += len(cols)
                have += len(cols)
                if have >= self.batch_size:
                    self._apply_columns(pending, nxt)
                    pending, nxt, have = [], {}, 0
                    self._yield()
                elif self.yield_to is not None and n % self.yield_every == 0:
                    self._yield()
        finally:
            batches.close()
            if pending:
                self._apply_columns(pending, nxt)
        return n

    def _apply_columns(self, pending: list[EventColumns], nxt: dict[str, Offset]) -> None:
        self.applied += self.sink.apply_columns(EventColumns.concat(pending))  # type: ignore[attr-defined]
        self.offsets.update((p, (int(o[0]), int(o[1]))) for p, o in nxt.items())

    def _poll_events(self, max_events: int | None) -> int:
        """``poll`` record by record (a source or sink without the columnar path)."""
        n = 0
        batch: list[Event] = []
        nxt: dict[str, Offset] = {}
        records = self._records()
        try:
            for part, off, ev in records:
                batch.append(ev)
                nxt[part] = (int(off[0]), int(off[1]) + 1)
                n += 1
                if len(batch) >= self.batch_size:
                    self._apply(batch, nxt)
                    batch, nxt = [], {}
                    self._yield()
                elif self.yield_to is not None and n % self.yield_every == 0:
                    self._yield()
                if max_events is not None and n >= max_events:
                    break
        finally:
            if hasattr(records, "close"):
                records.close()
            if batch:
                self._apply(batch, nxt)
        return n

    def _yield(self) -> None:
        """Between slices: let a waiting request thread take the GIL now rather than after
        the interpreter's switch interval (5 ms), then wait while the foreground is busy."""
        time.sleep(0)
        if self.yield_to is None or not self.yield_to():
            return
        t0 = time.monotonic()
        while self.yield_to() and not self._stop.is_set():
            if time.monotonic() - t0 >= self.max_yield_s:  # an overloaded foreground: progress anyway
                break
            time.sleep(YIELD_SLEEP_S)
        self.yielded_s += time.monotonic() - t0

    def _apply(self, batch: list[Event], nxt: dict[str, Offset]) -> None:
        self.applied += self.sink.apply(batch)
        self.offsets.update(nxt)

    # ------------------------------------------------------------------ committing
    def commit(self) -> None:
        """Write the sink's state and the offset(s) (atomically, durable)."""
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        self._last_commit = time.monotonic()
        if self.checkpoint is None or self.offsets == self.committed_offsets and self.checkpoint.exists():
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        arrays = {f"state/{k}": v for k, v in self.sink.state_dict().items()}
        if self.partitioned:
            names = sorted(self.offsets)
            arrays["parts"] = np.asarray(names, dtype=str)
            arrays["part_offsets"] = np.asarray([self.offsets[p] for p in names], dtype=np.int64).reshape(-1, 2)
        else:
            arrays["offset"] = np.asarray(self.offsets.get(SINGLE, (0, 0)), dtype=np.int64)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint)
        dfd = os.open(self.checkpoint.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.committed_offsets = dict(self.offsets)

    # ------------------------------------------------------------------ background loop
    def start(self, interval_s: float = 0.1) -> "LogConsumer":
        """Poll every ``interval_s`` in a daemon thread until ``stop``."""
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    got = self.poll()
                except Exception as exc:  # keep tailing; the stall fallback covers a long outage
                    self.errors += 1
                    now = time.monotonic()
                    if str(exc) != self._last_error[0] or now - self._last_error[1] >= ERROR_LOG_EVERY_S:
                        self._last_error = (str(exc), now)  # the same error (a corrupt partition) once a minute
                        log.exception("consumer %s: poll failed at offset %s", self.name, self.offset_json())
                    got = 0
                if not got:
                    self._stop.wait(interval_s)

        self._thread = threading.Thread(target=run, name=f"consumer-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, commit: bool = True, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if commit:
            self.commit()


def open_consumer(make: Callable[[], "LogConsumer"], checkpoint: str | Path | None) -> "LogConsumer":
    """``make()``; when that fails on an existing checkpoint (e.g. written with other
    windows), the checkpoint is set aside as ``<name>.unusable`` (logged) and ``make()``
    runs again, consuming from the log's start. Any other failure is raised."""
    try:
        return make()
    except Exception as exc:
        if checkpoint is None or not Path(checkpoint).exists():
            raise
        bad = Path(checkpoint).with_name(Path(checkpoint).name + ".unusable")
        log.warning("consumer checkpoint %s unusable (%s: %s); moved to %s, consuming from the start",
                    checkpoint, type(exc).__name__, exc, bad)
        Path(checkpoint).replace(bad)
        return make()
