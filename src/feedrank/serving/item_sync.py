"""Items posted to any serving worker reach every worker: the item logs and their tailer.

    sync = ItemSync(service, lambda: item_log_paths(root, "w0"), partition="w0")
    sync.replay()                        # start-up: every partition's items, oldest first
    sync.accept(records)                 # POST /v1/items on this worker: log (fsync), index
    sync.start(interval_s=2.0); ...; sync.stop()   # tail the other workers' logs meanwhile

Each worker writes the items it accepts to ``items.jsonl`` in its own event-log partition
(``<events>/w<N>/``; one JSON object a line, stamped ``logged_at``, fsync'd). ``ItemSync``
reads every partition's item log *incrementally* (a byte offset per file; a partition
that appears later is read from its start; a partial last line waits for its newline;
a corrupt line is logged with its file and byte offset and skipped, the records around
it are kept) and indexes what it has not indexed yet through ``service.add_items``.

One rule orders everything, at start-up and while running: for each ``item_id`` the
record with the newest ``logged_at`` wins (ties: the first one indexed). A record older
than the one already indexed for its id (a slow write from another worker) is skipped;
within one read only the newest record of an id is indexed. A record without
``published_at`` is published at its ``logged_at``, so every worker (and every restart)
gives it the same publication time.

Thread safety: ``add_items`` (pipeline/recommender.py) builds the grown catalogue aside
and swaps references (rows live before the catalogue that names them), under its own
lock, so it runs beside requests; the POST route has always called it from the thread
pool, and the tailer calls it from its own thread the same way. ``accept`` and each poll
hold one lock, so a poll cannot index another worker's older copy of an id between this
worker's write and its indexing of a newer one. With a model manager the service is the
manager: items it is given are replayed into every version it swaps in.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from feedrank.data.itemlog import ITEM_LOG, ItemChunk, ItemLog, StampedItem, order_items  # noqa: F401  (re-exported)

log = logging.getLogger("feedrank.serving")


def replay_items(paths: list[Path]) -> list[dict[str, Any]]:
    """Every record of these item logs, oldest ``logged_at`` first (ties: in path order)."""
    return [s.record for s in order_items(ItemLog(p).read_from(0).items for p in paths)]


class ItemSync:
    """Indexes into ``service`` every item record of every partition's item log, once
    (newest ``logged_at`` per id wins); see the module docstring.

    ``paths``: called on every poll; this worker's own item log first, then the others
    (``serving.app.item_log_paths``), so partitions that appear later are picked up.
    ``on_indexed(n)``: told how many records a poll indexed (metrics)."""

    def __init__(self, service: Any, paths: Callable[[], list[Path]], partition: str = "",
                 on_indexed: Callable[[int], None] | None = None) -> None:
        self.service = service
        self.paths = paths
        self.partition = partition
        self.on_indexed = on_indexed
        self.own = ItemLog(paths()[0])
        self._add = getattr(service, "add_items", None)
        self._offsets: dict[Path, int] = {}
        self._indexed: dict[str, float] = {}  # item_id -> logged_at of the record indexed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def accepts_items(self) -> bool:
        return callable(self._add)

    # ------------------------------------------------------------------ this worker's adds
    def accept(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``POST /v1/items``: durable in this worker's log, then indexed here. If indexing
        raises (the request fails), the logged records are retried by the next poll."""
        if not callable(self._add):
            raise TypeError(f"{type(self.service).__name__} does not accept item adds")
        with self._lock:
            stamp = self.own.append(records)
            result = self._add([_published(r, stamp) for r in records])
            for r in records:
                self._indexed[r["item_id"]] = max(stamp, self._indexed.get(r["item_id"], stamp))
            start, end = self.own.last_span
            if self._offsets.get(self.own.path) == start:  # indexed: the tailer need not read it back
                self._offsets[self.own.path] = end
        return result

    # ------------------------------------------------------------------ every worker's adds
    def replay(self) -> int:
        """Start-up: index every partition's item records (the first poll)."""
        n = self.poll()
        if n:
            log.info("replayed %d items from %s", n, ", ".join(str(p) for p in self._offsets if p.exists()))
        return n

    def poll(self) -> int:
        """Read what every item log gained since the last poll and index the records that
        are newer than what is indexed for their id; how many were indexed."""
        if not callable(self._add):
            return 0
        with self._lock:
            paths = self.paths()
            chunks, ends = [], {}
            for p in paths:  # an unreadable log raises before any offset moves
                chunk = ItemLog(p).read_from(self._offsets.get(p, 0))
                ends[p] = chunk.end
                chunks.append(chunk.items)
            self._offsets.update(ends)
            fresh: dict[str, StampedItem] = {}  # newest per id, in (stamp, path, line) order
            for s in order_items(chunks):
                iid = s.record["item_id"]
                if s.logged_at > self._indexed.get(iid, float("-inf")):
                    self._indexed[iid] = s.logged_at
                    fresh.pop(iid, None)
                    fresh[iid] = s
            if not fresh:
                return 0
            batch = [_published(s.record, s.logged_at) for s in fresh.values()]
            indexed = self._index(batch)
        if self.on_indexed is not None and indexed:
            self.on_indexed(indexed)
        return indexed

    def _index(self, batch: list[dict[str, Any]]) -> int:
        """``add_items(batch)``; if that fails, each record alone, so one record the service
        refuses does not keep the others out. How many were indexed."""
        try:
            self._add(batch)
            return len(batch)
        except Exception as exc:
            if len(batch) == 1:
                log.error("could not index item %r from the item logs (it stays logged; a restart retries it): %s: %s",
                          batch[0]["item_id"], type(exc).__name__, exc)
                return 0
            log.warning("could not index %d items from the item logs at once (%s: %s); trying them one by one",
                        len(batch), type(exc).__name__, exc)
        return sum(self._index([rec]) for rec in batch)

    # ------------------------------------------------------------------ the tailer thread
    def start(self, interval_s: float) -> ItemSync:
        """Poll every ``interval_s`` seconds in a daemon thread until ``stop``."""
        if interval_s <= 0:
            raise ValueError(f"item sync interval must be > 0 seconds, got {interval_s}")
        if self._thread is not None or not callable(self._add):
            return self
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    n = self.poll()
                    if n:
                        log.info("indexed %d items posted to other workers", n)
                except Exception:  # keep tailing: the next poll retries from the same offsets
                    log.exception("item sync poll failed")

        self._thread = threading.Thread(target=loop, name="item-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("item sync thread did not stop within %.0fs", timeout_s)
            self._thread = None


def _published(record: dict[str, Any], stamp: float) -> dict[str, Any]:
    """The record, published at ``stamp`` when it names no ``published_at``."""
    if record.get("published_at") is None and stamp > 0:
        return dict(record, published_at=stamp)
    return record
