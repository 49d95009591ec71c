"""Event-log consumers with their own committed offsets (exactly-once for checkpointed sinks).

    consumer = LogConsumer(event_log, rt, Path("var/consumers/realtime.ckpt.npz"))
    consumer.poll()                 # read new records, apply them, heartbeat, maybe commit
    consumer.start(interval_s=0.1)  # or poll in a background thread; consumer.stop() commits

A consumer reads any ``EventSource``: an object whose ``read(from_offset)`` yields
``(offset, event)`` pairs in log order, where ``offset`` is a ``(segment, line)`` tuple
(``data.eventlog.EventLog`` and its ``LogOffset`` fit). The offset it keeps is the *next*
record to read, ``(segment, line + 1)`` after the last applied one.

Commit = one file written atomically (tmp, fsync, rename) holding the sink's state and the
offset together, so after a crash the consumer restarts from a state and an offset that
match: no event is counted twice or lost. Sinks that cannot checkpoint (e.g. a Redis
store) rely on the sink's dedupe by event id (``RealtimeFeatures`` remembers recent ids).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Protocol

import numpy as np

from feedrank.types import Event

log = logging.getLogger(__name__)

Offset = tuple[int, int]


class EventSource(Protocol):
    def read(self, from_offset: Offset | None = None) -> Iterable[tuple[Offset, Event]]: ...


class Sink(Protocol):
    def apply(self, events: Iterable[Event]) -> int: ...

    def heartbeat(self, now_wall: float | None = None) -> None: ...

    def state_dict(self) -> Mapping[str, np.ndarray]: ...

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None: ...


class LogConsumer:
    """Tails an ``EventSource`` into a ``Sink``; commits state + offset together."""

    def __init__(self, source: EventSource, sink: Sink, checkpoint: str | Path | None, *, batch_size: int = 8192,
                 commit_every_s: float = 5.0, name: str = "consumer") -> None:
        self.source, self.sink, self.name = source, sink, name
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.batch_size, self.commit_every_s = int(batch_size), float(commit_every_s)
        self.offset: Offset = (0, 0)
        self.committed: Offset = (0, 0)
        self.applied = 0
        self._last_commit = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        if self.checkpoint is not None and self.checkpoint.exists():
            self._load()

    def _load(self) -> None:
        assert self.checkpoint is not None
        with np.load(self.checkpoint, allow_pickle=False) as z:
            state = {k[len("state/") :]: z[k] for k in z.files if k.startswith("state/")}
            off = z["offset"]
        self.sink.load_state_dict(state)
        self.offset = self.committed = (int(off[0]), int(off[1]))
        log.info("consumer %s: resumed at offset %s from %s", self.name, self.offset, self.checkpoint)

    def poll(self, max_events: int | None = None) -> int:
        """Apply every record after the offset (at most ``max_events``); returns how many
        records were read. Commits when ``commit_every_s`` has passed."""
        with self._lock:
            n = 0
            batch: list[Event] = []
            last: Offset | None = None
            for off, ev in self.source.read(self.offset):
                batch.append(ev)
                last = (int(off[0]), int(off[1]))
                n += 1
                if len(batch) >= self.batch_size:
                    self._apply(batch, last)
                    batch = []
                if max_events is not None and n >= max_events:
                    break
            if batch and last is not None:
                self._apply(batch, last)
            self.sink.heartbeat()
            if self.checkpoint is not None and time.monotonic() - self._last_commit >= self.commit_every_s:
                self._commit()
            return n

    def _apply(self, batch: list[Event], last: Offset) -> None:
        self.applied += self.sink.apply(batch)
        self.offset = (last[0], last[1] + 1)

    def commit(self) -> None:
        """Write the sink's state and the offset (atomically, durable)."""
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        self._last_commit = time.monotonic()
        if self.checkpoint is None or self.offset == self.committed and self.checkpoint.exists():
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        arrays = {f"state/{k}": v for k, v in self.sink.state_dict().items()}
        with open(tmp, "wb") as f:
            np.savez(f, offset=np.asarray(self.offset, dtype=np.int64), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint)
        dfd = os.open(self.checkpoint.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.committed = self.offset

    # ------------------------------------------------------------------ background loop
    def start(self, interval_s: float = 0.1) -> "LogConsumer":
        """Poll every ``interval_s`` in a daemon thread until ``stop``."""
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    got = self.poll()
                except Exception:  # keep tailing; the stall fallback covers a long outage
                    self.errors += 1
                    log.exception("consumer %s: poll failed at offset %s", self.name, self.offset)
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
