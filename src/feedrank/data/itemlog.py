"""The item log: append-only JSON lines of item adds accepted by a serving worker, each
stamped ``logged_at`` and fsync'd (``<events>/w<N>/items.jsonl``), and the one reader of
it: serving's ``ItemSync`` tails it, retraining (``pipeline.retrain_data.read_item_log``)
reads it whole.

    log = ItemLog(Path("var/events/w0/items.jsonl"))
    stamp = log.append([{"item_id": "n1", "title": "..."}])   # durable when it returns
    chunk = log.read_from(offset)          # complete lines from a byte offset: .items, .end, .corrupt
    order_items([chunk_a.items, chunk_b.items])   # oldest logged_at first, ties in path/line order
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

log = logging.getLogger("feedrank.data.itemlog")

ITEM_LOG = "items.jsonl"


@dataclass(frozen=True)
class StampedItem:
    """One record of an item log: when it was logged, the item dict (without the stamp)."""

    logged_at: float
    record: dict[str, Any]


@dataclass
class ItemChunk:
    """What one incremental read of an item log found."""

    items: list[StampedItem] = field(default_factory=list)
    end: int = 0                              # the byte offset to read from next time
    corrupt: list[int] = field(default_factory=list)  # byte offsets of lines skipped as corrupt


class ItemLog:
    """Append-only JSON lines of accepted item adds (each stamped ``logged_at``), fsync'd."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self.last_span = (0, 0)  # byte offsets (start, end) of what the last append wrote

    def append(self, records: list[dict[str, Any]]) -> float:
        """Write ``records`` (durable when this returns); the ``logged_at`` they got.
        A torn last line left by a crash is closed first, so it stays one corrupt line
        instead of swallowing the first new record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = float(self.clock())
        data = b"".join(orjson.dumps({**r, "logged_at": now}) + b"\n" for r in records)
        with self._lock, open(self.path, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            self.last_span = (size, size + len(data))
        return now

    def read_from(self, offset: int = 0) -> ItemChunk:
        """The complete lines from byte ``offset`` on. A last line without its newline (a
        write in progress, or torn) is left for the next read. A file now shorter than
        ``offset`` (replaced or truncated) is read from its start."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < offset:
                    log.warning("item log %s shrank below offset %d (now %d bytes): reading it again from the start",
                                self.path, offset, size)
                    offset = 0
                f.seek(offset)
                data = f.read(size - offset)
        except FileNotFoundError:
            return ItemChunk(end=0)
        out = ItemChunk(end=offset)
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            line = data[pos:nl]
            at = offset + pos
            pos = nl + 1
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("item_id"), str):
                log.error("item log %s: skipping a corrupt line at byte offset %d (%d bytes, not an item record)",
                          self.path, at, len(line))
                out.corrupt.append(at)
                continue
            stamp = rec.pop("logged_at", 0.0)
            stamp = float(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else 0.0
            out.items.append(StampedItem(stamp, rec))
        out.end = offset + pos
        return out

    def read_stamped(self) -> list[tuple[float, dict[str, Any]]]:
        """``(logged_at, record)`` per complete line (0.0 for records without a stamp)."""
        return [(s.logged_at, s.record) for s in self.read_from(0).items]

    def read(self) -> list[dict[str, Any]]:
        return [r for _, r in self.read_stamped()]


def order_items(chunks: Iterable[list[StampedItem]]) -> list[StampedItem]:
    """Records of several logs (in path order), oldest ``logged_at`` first; ties in path
    order, then line order. The one ordering rule of replay and tailing."""
    stamped = [(s.logged_at, i, j, s) for i, items in enumerate(chunks) for j, s in enumerate(items)]
    return [s for *_, s in sorted(stamped, key=lambda x: x[:3])]
