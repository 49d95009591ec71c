"""A model registry: integer versions and an atomic ``current`` pointer.

    registry/
      versions/000001/   a model bundle (manifest.json + files), never modified once published
      versions/000002/
      current            "2\n": the version serving should run (replaced atomically)
      history.jsonl      one line per promote/rollback: {"ts", "action", "from", "to"}

``publish`` copies a bundle in under the next free number (copy to a staging folder, then
rename: a reader never sees half a version). ``promote`` and ``rollback`` rewrite
``current`` by write-to-temp + fsync + rename, so a server polling it reads either the old
or the new number, never a torn file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedrank.errors import CorruptFile, NotFound
from feedrank.registry.bundle import open_bundle

VERSIONS = "versions"
CURRENT = "current"
HISTORY = "history.jsonl"


@dataclass(frozen=True)
class VersionInfo:
    version: int
    path: Path
    bundle_version: str
    created_at: float
    current: bool
    metrics: dict[str, Any]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelRegistry:
    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        elif not (self.root / VERSIONS).is_dir():
            raise NotFound(f"{self.root}: not a model registry (no {VERSIONS}/); create one with `feedrank models publish`")

    # ------------------------------------------------------------------ reading
    def versions(self) -> list[int]:
        out = []
        for p in (self.root / VERSIONS).iterdir():
            if p.is_dir() and p.name.isdigit():
                out.append(int(p.name))
        return sorted(out)

    def path(self, version: int) -> Path:
        p = self.root / VERSIONS / f"{version:06d}"
        if not p.is_dir():
            raise NotFound(f"model version {version} not in registry {self.root} (have: {self.versions() or 'none'})")
        return p

    def current(self) -> int | None:
        p = self.root / CURRENT
        if not p.exists():
            return None
        text = p.read_text().strip()
        if not text.isdigit():
            raise CorruptFile(f"{p}: expected a version number, got {text[:40]!r}")
        return int(text)

    def info(self, version: int) -> VersionInfo:
        m = open_bundle(self.path(version), verify=False)
        metrics = m.body.get("metrics") or {}
        summary = {k: metrics.get(k) for k in ("retrieval", "ranking") if metrics.get(k) is not None}
        return VersionInfo(version, self.path(version), m.version, m.created_at, version == self.current(), summary)

    def list(self) -> list[VersionInfo]:
        return [self.info(v) for v in self.versions()]

    def history(self) -> list[dict[str, Any]]:
        p = self.root / HISTORY
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    # ------------------------------------------------------------------ writing
    def publish(self, bundle_dir: str | Path, promote: bool = False) -> int:
        """Copy a verified bundle in as the next version; optionally make it current."""
        open_bundle(bundle_dir, verify=True)  # refuse a corrupt bundle before copying
        version = (self.versions() or [0])[-1] + 1
        staging = self.root / VERSIONS / f".staging-{uuid.uuid4().hex[:8]}"
        shutil.copytree(bundle_dir, staging)
        final = self.root / VERSIONS / f"{version:06d}"
        os.rename(staging, final)  # fails if another publisher took the number: no overwrite
        if promote:
            self.promote(version)
        return version

    def promote(self, version: int) -> None:
        self.path(version)  # must exist
        open_bundle(self.path(version), verify=True)
        before = self.current()
        _atomic_write(self.root / CURRENT, f"{version}\n")
        self._log("promote", before, version)

    def rollback(self) -> int:
        """Return to the version current before the last promote still in effect.

        History is a stack: promote pushes, rollback pops; rolling back twice after two
        promotes lands on the version before both."""
        stack: list[int] = []
        for entry in self.history():
            if entry["action"] == "promote":
                stack.append(int(entry["to"]))
            elif entry["action"] == "rollback" and stack:
                stack.pop()
        if len(stack) < 2:
            raise NotFound(f"registry {self.root}: nothing to roll back to (current={self.current()})")
        cur, target = stack[-1], stack[-2]
        self.path(target)
        _atomic_write(self.root / CURRENT, f"{target}\n")
        self._log("rollback", cur, target)
        return target

    def _log(self, action: str, before: int | None, after: int) -> None:
        with open(self.root / HISTORY, "a") as f:
            f.write(json.dumps({"ts": time.time(), "action": action, "from": before, "to": after}) + "\n")
            f.flush()
            os.fsync(f.fileno())
