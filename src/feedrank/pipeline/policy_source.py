"""Reloadable policy files (blocklists, experiments): YAML re-read when it changes.

A bad edit never takes the service down: the previous value stays in force, the problem
is logged with every error listed, and ``errors`` counts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from feedrank.errors import SchemaError
from feedrank.rerank.filters import Blocklist

log = logging.getLogger(__name__)
CHECK_EVERY_S = 2.0
T = TypeVar("T")


class ReloadableFile(Generic[T]):
    """``current()`` returns the parsed file, re-parsed when its mtime changes (checked at
    most every ``check_every_s``). No path: always ``default``."""

    def __init__(self, path: str | Path | None, parse: Callable[[Any], T], default: T, what: str = "policy file",
                 check_every_s: float = CHECK_EVERY_S) -> None:
        self.path = Path(path) if path else None
        self.parse = parse
        self.what = what
        self.check_every_s = check_every_s
        self._value: T = default
        self._mtime: float | None = None
        self._checked = -float("inf")
        self._lock = threading.Lock()
        self.errors = 0
        self.reloads = 0
        if self.path is not None:
            self._reload(force=True)

    def current(self) -> T:
        if self.path is not None and time.monotonic() - self._checked >= self.check_every_s:
            self._reload()
        return self._value

    def _reload(self, force: bool = False) -> None:
        with self._lock:
            self._checked = time.monotonic()
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                if force:
                    log.warning("%s %s does not exist yet; using the default", self.what, self.path)
                return
            if not force and mtime == self._mtime:
                return
            try:
                raw = yaml.safe_load(self.path.read_text())
                self._value = self.parse(raw)
                self._mtime = mtime
                self.reloads += 1
                log.info("%s %s loaded", self.what, self.path)
            except (SchemaError, yaml.YAMLError, OSError, TypeError, ValueError) as exc:
                self.errors += 1
                self._mtime = mtime  # do not re-read the same bad file every check
                log.error("%s %s not loaded, keeping the previous one: %s", self.what, self.path, exc)


def _parse_blocklist(raw: Any) -> Blocklist:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise SchemaError("blocklist: top level must be a mapping")
    return Blocklist.from_dict(raw)


class BlocklistSource(ReloadableFile[Blocklist]):
    def __init__(self, path: str | Path | None, check_every_s: float = CHECK_EVERY_S) -> None:
        super().__init__(path, _parse_blocklist, Blocklist(), "blocklist", check_every_s)
