"""Background batching of server-generated events (impressions) into an ``EventLog``.

The request path hands its impressions to ``submit`` and returns at once; one thread
appends them, many requests per fsync. Unlike ``POST /v1/events`` (fsync before 202),
impressions are durable within milliseconds of the response, not before it: with
``linger_s`` > 0 the thread waits that long for more before each append, so a crash can
lose the impressions of the last ``linger_s`` plus one append; ``close`` (a clean
shutdown) writes everything submitted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from feedrank.data.eventlog import EventLog
from feedrank.types import Event

log = logging.getLogger(__name__)


class ImpressionWriter:
    """Appends server-generated events (impressions) to an ``EventLog`` from one
    background thread, many requests per fsync.

    ``submit`` never blocks: when more than ``max_pending`` events wait, the new ones are
    dropped and counted (``stats()["dropped"]``). ``flush`` waits until everything
    submitted so far is durable; ``close`` flushes and stops the thread.
    """

    def __init__(self, log: EventLog, *, max_pending: int = 100_000, max_batch: int = 4096, name: str = "impression-writer",
                 linger_s: float = 0.0) -> None:
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0 seconds, got {linger_s}")
        self.log = log
        self.max_pending = max_pending
        self.max_batch = max_batch
        # wait up to this long after the first pending event for more (fewer, larger fsyncs);
        # ``flush``/``close`` cut the wait short. Durability bound: linger_s + one append.
        self.linger_s = float(linger_s)
        self._flush_target = 0
        self._buf: deque[Event] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._submitted = 0
        self._done = 0  # events taken and processed (written, duplicate or failed)
        self._written = 0
        self._duplicates = 0
        self._dropped = 0
        self._failed = 0
        self._batches = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, events: Sequence[Event]) -> bool:
        """Queue events for appending; False (and counted as dropped) if full or closed."""
        n = len(events)
        if n == 0:
            return True
        with self._cond:
            if self._closing or len(self._buf) + n > self.max_pending:
                self._dropped += n
                return False
            was_empty = not self._buf
            self._buf.extend(events)
            self._submitted += n
            if was_empty or self.linger_s <= 0 or len(self._buf) >= self.max_batch:  # else it lingers anyway
                self._cond.notify_all()
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buf and not self._closing:
                    self._cond.wait()
                if not self._buf and self._closing:
                    return
                if self.linger_s > 0:
                    until = time.monotonic() + self.linger_s
                    while (not self._closing and self._flush_target <= self._done and len(self._buf) < self.max_batch
                           and (left := until - time.monotonic()) > 0):
                        self._cond.wait(left)
                n = min(len(self._buf), self.max_batch)
                batch = [self._buf.popleft() for _ in range(n)]
            written = dups = failed = 0
            try:
                res = self.log.append(batch)
                written, dups = len(res.accepted), len(res.duplicates)
            except Exception:
                failed = len(batch)
                log.exception("impression writer: could not append %d events to %s", len(batch), self.log.root)
            with self._cond:
                self._written += written
                self._duplicates += dups
                self._failed += failed
                self._batches += 1
                self._done += len(batch)
                self._cond.notify_all()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every event submitted before this call is processed; True if so."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            if target > self._flush_target:  # the writer stops lingering until this is written
                self._flush_target = target
                self._cond.notify_all()
            while self._done < target:
                if not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush, then stop the thread. Later submits are dropped. True if all flushed."""
        ok = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return ok and not self._thread.is_alive()

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "submitted": self._submitted,
                "written": self._written,
                "duplicates": self._duplicates,
                "dropped": self._dropped,
                "failed": self._failed,
                "batches": self._batches,
                "pending": len(self._buf),
            }
