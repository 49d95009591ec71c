"""Fixtures shared by the unit tests of several packages."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

CorruptLine = Callable[[Path, int], None]


def _corrupt_line(seg: Path, line: int) -> None:
    """Flip one byte inside the 0-based ``line`` of an event-log segment, so that record's
    CRC no longer matches (the lines before and after stay intact)."""
    data = bytearray(seg.read_bytes())
    start = 0
    for _ in range(line):
        start = data.index(b"\n", start) + 1
    end = data.find(b"\n", start)
    if (len(data) if end < 0 else end) - start <= 30:
        raise ValueError(f"{seg}: line {line} is too short to corrupt")
    data[start + 30] ^= 0x20
    seg.write_bytes(bytes(data))


@pytest.fixture
def corrupt_line() -> CorruptLine:
    """``corrupt_line(segment_path, line)``: damage one record of a segment in place, for
    the tests of every reader of worker partitions (``data.partitions`` and its users)."""
    return _corrupt_line
