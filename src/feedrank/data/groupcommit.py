"""Group commit for the event log's writer (data/eventlog.py ``EventLog`` inherits it).

Appends get a sequence number; an fsync makes every append up to one durable. Appends from
concurrent threads that wait for an fsync at the same time share one: the first becomes
the leader and syncs everything written so far (``_lead_sync``), the others wait on
``_sync_cond``. If an fsync fails, every batch not yet durable fails (OSError), is
truncated away and its ids are forgotten (``_fail_pending_locked``).

The state it works on is the ``EventLog``'s: ``_lock`` (appends), ``_sync_cond``,
``_write_seq`` / ``_durable_seq`` / ``_syncing``, ``_pending`` (seq, ids) written but not
durable, ``_failures``, ``_segments`` (the tail's ``size``/``lines`` are what readers see),
``_fd``, ``_ids``, ``root``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("feedrank.data.eventlog")


class GroupCommit:
    """The fsync side of ``EventLog`` (see the module docstring)."""

    _lock: Any
    _sync_cond: Any
    _write_seq: int
    _durable_seq: int
    _syncing: bool
    _pending: list
    _failures: Any
    _segments: list
    _fd: int | None
    _ids: set
    root: Any

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

    def _publish_locked(self, seg: Any, size: int, lines: int, target: int) -> None:
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
