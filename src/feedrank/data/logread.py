"""Decoding runs of event-log lines, and batching them as columns (data/eventlog.py).

``EventLog._scan_runs`` reads committed lines a run at a time and decodes them with
``decode_run``; ``read`` turns each record into an ``Event``, ``read_batches`` feeds the
runs to ``batches_from_runs``, which cuts them into ``LogBatch``es (``EventColumns`` plus
each record's segment and line) without an ``Event`` per record.

Errors keep ``read``'s contract: a corrupt line raises ``CorruptFile`` after the records
before it were handed out, and a record that is not a stored event raises
``SchemaError`` after a batch of the records before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from feedrank.data.events import columns_from_dicts
from feedrank.data.logformat import LogBatch, decode_checked, decode_line
from feedrank.errors import CorruptFile, SchemaError

Run = tuple[int, int, list[dict], list[int]]  # (segment, first line, event dicts, end byte of each line)


def decode_run(path: Path, number: int, first: int, raws: list[bytes], ends: list[int], torn: bool,
               checked: bool = False) -> Iterator[Run]:
    """The event dicts of consecutive lines ``raws`` of segment ``number`` from line
    ``first`` (``checked``: their framing and CRC were checked already), as one run; at a
    corrupt line (or the last one, ``torn``: not terminated) a run of the lines before
    it, then ``CorruptFile`` naming the line."""
    objs = [decode_checked(r) for r in raws] if checked else [decode_line(r) for r in raws]
    if torn:
        objs[-1] = None
    if None in objs:
        k = objs.index(None)
        if k:
            yield number, first, objs[:k], ends[:k]  # type: ignore[misc]
        raise CorruptFile(f"event log {path}: line {first + k + 1} is corrupt (changed after it was written)")
    yield number, first, objs, ends  # type: ignore[misc]


def batches_from_runs(runs: Iterator[Run], batch_size: int, limit: int | None,
                      resume: dict[int, tuple[int, int]]) -> Iterator[LogBatch]:
    """``LogBatch``es of ``batch_size`` records (the last may be shorter; at most
    ``limit`` in all) cut from ``runs``. ``resume[segment]`` is set to (next line, its byte
    position) of the last record batched, so the next read from there seeks to it."""
    left = -1 if limit is None else int(limit)
    objs: list[dict] = []
    segs: list[np.ndarray] = []
    nums: list[np.ndarray] = []
    try:
        for number, first, run, ends in runs:
            while run:
                k = min(len(run), batch_size - len(objs), left if left > 0 else len(run))
                objs += run[:k]
                segs.append(np.full(k, number, dtype=np.int64))
                nums.append(np.arange(first, first + k, dtype=np.int64))
                resume[number] = (first + k, ends[k - 1])
                run, ends, first = run[k:], ends[k:], first + k
                left -= k if left > 0 else 0
                if len(objs) >= batch_size or left == 0:
                    yield from _batches(segs, nums, objs)
                    objs, segs, nums = [], [], []
                    if left == 0:
                        return
    except CorruptFile:
        if objs:
            yield from _batches(segs, nums, objs)
        raise
    finally:
        runs.close()  # type: ignore[attr-defined]
    if objs:
        yield from _batches(segs, nums, objs)


def _batches(segs: list[np.ndarray], lines: list[np.ndarray], objs: list[dict]) -> Iterator[LogBatch]:
    """The ``LogBatch`` of decoded lines; for a record that is not a stored event, a batch
    of the records before it, then its ``SchemaError``."""
    seg, line = np.concatenate(segs), np.concatenate(lines)
    try:
        batch = LogBatch(seg, line, columns_from_dicts(objs))
    except SchemaError as exc:
        k = int(getattr(exc, "record", 0))
        if k > 0:
            yield from _batches([seg[:k]], [line[:k]], objs[:k])
        raise
    yield batch
