"""Memory an event log's id bookkeeping retains per event (issue #5): two worker partitions
written by ``EventLog`` writers, each read back by a ``readonly`` reader (what every
serving worker's live consumer does), 20 impressions per feed with serving's event ids
(``<request id>:<rank>``). Prints the ids held and the bytes still allocated per event
written (``tracemalloc``), after all reads.

Examples:

    .venv/bin/python benchmarks/eventlog_id_memory.py                  # 3,000 feeds = 60,000 events
    .venv/bin/python benchmarks/eventlog_id_memory.py --feeds 10000
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/eventlog_id_memory.py   # an older checkout's code
"""

from __future__ import annotations

import argparse
import tempfile
import tracemalloc
import uuid
from pathlib import Path

from feedrank.data.eventlog import EventLog
from feedrank.types import Event, EventKind


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feeds", type=int, default=3000, help="feeds written, alternating between the partitions")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="idmem-"))
    tracemalloc.start()
    writers = [EventLog(root / "w0"), EventLog(root / "w1")]
    readers = [EventLog(root / "w0", readonly=True), EventLog(root / "w1", readonly=True)]
    base = tracemalloc.get_traced_memory()[0]
    n = 0
    for req in range(args.feeds):
        rid = uuid.uuid4().hex
        writers[req % 2].append([
            Event(event_id=f"{rid}:{k}", ts=1.7e9, user_id=f"u{req}", item_id=f"i{k}", kind=EventKind.IMPRESSION,
                  position=k - 1, request_id=rid, propensity=1.0, arm="") for k in range(1, 21)])
        n += 20
        if req % 100 == 99:  # tail as a consumer does
            for r in readers:
                sum(1 for _ in r.read())
    for r in readers:
        sum(1 for _ in r.read())
    held = sum(len(log._ids) for log in writers + readers)
    per_event = (tracemalloc.get_traced_memory()[0] - base) / max(n, 1)
    print(f"events {n:,}; ids held by 2 writers + 2 readers: {held:,}; bytes retained per event written: {per_event:.0f}")
    for log in writers + readers:
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
