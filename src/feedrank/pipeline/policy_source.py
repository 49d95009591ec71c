"""Reloadable policy files: the blocklist YAML, re-read when it changes on disk.

A bad edit never takes the service down: the previous blocklist stays in force, the
problem is logged with every error listed, and ``errors`` counts it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import yaml

from feedrank.errors import SchemaError
from feedrank.rerank.filters import Blocklist

log = logging.getLogger(__name__)
CHECK_EVERY_S = 2.0


class BlocklistSource:
    def __init__(self, path: str | Path | None, check_every_s: float = CHECK_EVERY_S) -> None:
        self.path = Path(path) if path else None
        self.check_every_s = check_every_s
        self._blocklist = Blocklist()
        self._mtime: float | None = None
        self._checked = -float("inf")
        self._lock = threading.Lock()
        self.errors = 0
        self.reloads = 0
        if self.path is not None:
            self._reload(force=True)

    def current(self) -> Blocklist:
        if self.path is None:
            return self._blocklist
        if time.monotonic() - self._checked >= self.check_every_s:
            self._reload()
        return self._blocklist

    def _reload(self, force: bool = False) -> None:
        with self._lock:
            self._checked = time.monotonic()
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                if force:
                    log.warning("blocklist file %s does not exist yet; no items blocked", self.path)
                return
            if not force and mtime == self._mtime:
                return
            try:
                raw = yaml.safe_load(self.path.read_text()) or {}
                if not isinstance(raw, dict):
                    raise SchemaError(f"{self.path}: top level must be a mapping")
                self._blocklist = Blocklist.from_dict(raw)
                self._mtime = mtime
                self.reloads += 1
                log.info("blocklist %s loaded: %d items, %d creators, %d categories", self.path,
                         len(self._blocklist.items), len(self._blocklist.creators), len(self._blocklist.categories))
            except (SchemaError, yaml.YAMLError, OSError) as exc:
                self.errors += 1
                self._mtime = mtime  # do not re-read the same bad file every check
                log.error("blocklist %s not loaded, keeping the previous one: %s", self.path, exc)
