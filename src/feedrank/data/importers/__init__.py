"""Importers: public recommendation data sets -> canonical dataset folders.

    from feedrank.data.importers import import_mind, import_movielens
    meta = import_mind(Path("../shared/data/MIND/MINDsmall_train"), Path("var/mind"))
    meta = import_movielens(Path("../shared/data/MovieLens/ml-100k"), Path("var/ml100k"))

This module also holds the delimited-text reading layer both importers share: files are
read as raw lines in bounded chunks (never through a CSV dialect that would guess at
quotes), split into fields with Arrow compute, and every malformed line is reported as a
problem naming the file, the 1-based line number and the field. Importers collect all
problems of a file and raise one :class:`~feedrank.errors.SchemaError` listing them.
See ``docs/importers.md`` for what each importer maps to what.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from feedrank.errors import NotFound, SchemaError

MAX_PROBLEMS = 10_000
_INT_RE = r"^-?[0-9]+$"
_FLOAT_RE = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


@dataclass
class Problems:
    """Collects problems (``"file: line N, field 'f': what"``) up to ``MAX_PROBLEMS``."""

    items: list[str] = field(default_factory=list)
    dropped: int = 0

    def add(self, problem: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(problem)
        else:
            self.dropped += 1

    def extend(self, problems: list[str]) -> None:
        for p in problems:
            self.add(p)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, what: str) -> None:
        """Raise one SchemaError listing every collected problem."""
        if not self.items:
            return
        listed = list(self.items)
        if self.dropped:
            listed.append(f"... and {self.dropped} more problem(s) not listed")
        raise SchemaError(f"{what}: {len(self.items) + self.dropped} problem(s)", listed)


@dataclass
class LineChunk:
    """A chunk of non-empty lines of one text file.

    ``lines`` is an Arrow string array (line terminators stripped); ``line_no`` holds
    each line's 1-based number in the file, shape (N,) int64.
    """

    lines: pa.Array
    line_no: np.ndarray


def require_file(path: Path) -> Path:
    """``path`` if it is a file, else NotFound naming it."""
    if not path.is_file():
        raise NotFound(f"{path}: file not found")
    return path


def iter_line_chunks(
    path: Path,
    *,
    encoding: str = "utf-8",
    chunk_lines: int = 200_000,
    skip_lines: int = 0,
    problems: Problems | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> Iterator[LineChunk]:
    """Yield the file's non-empty lines in chunks of at most ``chunk_lines``.

    Only ``\\n`` ends a line (a stray ``\\r`` inside a field stays in the field; a
    trailing ``\\r`` is stripped). Lines that do not decode with ``encoding`` are
    reported to ``problems`` and left out of the chunk. Empty lines are skipped.
    """
    fname = path.name
    total = path.stat().st_size
    with open(path, "rb") as fh, tqdm(
        total=total, unit="B", unit_scale=True, desc=desc or fname, disable=not progress, leave=False
    ) as bar:
        for _ in range(skip_lines):
            bar.update(len(fh.readline()))
        line_base = skip_lines + 1
        while True:
            raw = list(itertools.islice(fh, chunk_lines))
            if not raw:
                return
            bar.update(sum(len(r) for r in raw))
            stripped = [r.rstrip(b"\r\n") for r in raw]
            numbers = np.arange(line_base, line_base + len(raw), dtype=np.int64)
            line_base += len(raw)
            keep = np.fromiter((len(s) > 0 for s in stripped), dtype=bool, count=len(stripped))
            texts: list[str] = []
            for i, s in enumerate(stripped):
                if not keep[i]:
                    continue
                try:
                    texts.append(s.decode(encoding))
                except UnicodeDecodeError as exc:
                    keep[i] = False
                    if problems is not None:
                        problems.add(f"{fname}: line {numbers[i]}: not valid {encoding} text ({exc.reason})")
            if texts:
                yield LineChunk(pa.array(texts, type=pa.string()), numbers[keep])


def split_fields(
    chunk: LineChunk, sep: str, names: tuple[str, ...], fname: str, problems: Problems
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Split each line on the literal ``sep`` into exactly ``len(names)`` fields.

    Lines with another field count are reported and dropped. Returns the columns of the
    good lines (Arrow string arrays) and their line numbers, shape (M,) int64.
    """
    parts = pc.split_pattern(chunk.lines, pattern=sep)
    counts = np.asarray(pc.list_value_length(parts))
    bad = counts != len(names)
    for i in np.flatnonzero(bad):
        problems.add(
            f"{fname}: line {chunk.line_no[i]}, field count: expected {len(names)} fields "
            f"({', '.join(names)}) separated by {sep!r}, found {counts[i]}"
        )
    if bad.any():
        parts = parts.filter(pa.array(~bad))
    cols = {name: pc.list_element(parts, i) for i, name in enumerate(names)}
    return cols, chunk.line_no[~bad]


def check_not_empty(col: pa.Array, name: str, line_no: np.ndarray, fname: str, problems: Problems) -> np.ndarray:
    """Report empty values of a required text field. Returns the bad mask, shape (N,) bool."""
    bad = np.asarray(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0))
    for i in np.flatnonzero(bad):
        problems.add(f"{fname}: line {line_no[i]}, field '{name}': empty")
    return bad


def parse_numbers(
    col: pa.Array, name: str, line_no: np.ndarray, fname: str, problems: Problems, kind: str = "int"
) -> tuple[np.ndarray, np.ndarray]:
    """Parse a text column as integers (``kind="int"``) or floats (``kind="float"``).

    Returns ``(values, bad)``: values shape (N,) int64 or float64 (0 where bad) and the
    bad mask; every bad value is reported with its line.
    """
    text = pc.utf8_trim_whitespace(col)
    ok = np.asarray(pc.match_substring_regex(text, _INT_RE if kind == "int" else _FLOAT_RE))
    bad = ~ok
    for i in np.flatnonzero(bad):
        problems.add(f"{fname}: line {line_no[i]}, field '{name}': {col[int(i)].as_py()!r} is not {'an integer' if kind == 'int' else 'a number'}")
    safe = pc.if_else(pa.array(ok), text, "0")
    values = np.asarray(pc.cast(safe, pa.int64() if kind == "int" else pa.float64()))
    return values, bad


def split_tokens(col: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Split a space-separated list column into its tokens (empty fields give none).

    Returns ``(tokens, parent, index)``: the flat tokens (Arrow strings), the row each
    came from, shape (T,) int64, and each token's 0-based index within its row, (T,) int64.
    """
    lists = pc.utf8_split_whitespace(col)
    offsets = np.asarray(lists.offsets)
    flat = pc.list_flatten(lists)
    parent = np.asarray(pc.list_parent_indices(lists)).astype(np.int64)
    keep = np.asarray(pc.not_equal(pc.utf8_length(flat), 0))
    if keep.all():
        return flat, parent, np.arange(len(flat), dtype=np.int64) - offsets[parent]
    kept_before = np.concatenate([[0], np.cumsum(keep)])  # kept tokens before flat index i
    index = kept_before[1:] - 1 - kept_before[offsets[:-1]][parent]
    return flat.filter(pa.array(keep)), parent[keep], index[keep]


def join_str(*parts: str | pa.Array | np.ndarray) -> pa.Array:
    """Element-wise string concatenation of arrays and scalars (numbers become text)."""
    args: list[pa.Array | str] = []
    for p in parts:
        if isinstance(p, np.ndarray):
            p = pa.array(p)
        if isinstance(p, (pa.Array, pa.ChunkedArray)) and not pa.types.is_string(p.type):
            p = pc.cast(p, pa.string())
        args.append(p)
    return pc.binary_join_element_wise(*args, "")


def sanitize_id(text: str) -> str:
    """A file or folder name made safe for use inside a source tag."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "unknown"


# Re-exported at the bottom: the importer modules import the helpers above.
from feedrank.data.importers.mind import import_mind  # noqa: E402
from feedrank.data.importers.movielens import detect_movielens_layout, import_movielens  # noqa: E402

__all__ = [
    "import_mind",
    "import_movielens",
    "detect_movielens_layout",
    "Problems",
    "LineChunk",
    "iter_line_chunks",
    "split_fields",
    "split_tokens",
    "parse_numbers",
    "check_not_empty",
    "join_str",
    "require_file",
]
