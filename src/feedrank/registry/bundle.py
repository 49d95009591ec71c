"""Model bundles: self-describing folders, written atomically, verified on open.

    staging = begin_bundle(out)            # a temp folder beside ``out``
    ... write files into staging ...
    finalize_bundle(staging, out, manifest)  # hashes every file, writes manifest.json, renames

    manifest = open_bundle(out)            # re-hashes every file; ModelLoadError on mismatch

Nothing here unpickles: weights are loaded with ``torch.load(weights_only=True)``, arrays
with ``np.load(allow_pickle=False)``, indexes with FAISS's own reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedrank.errors import ModelLoadError, NotFound

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1


@dataclass(frozen=True)
class BundleManifest:
    root: Path
    version: str
    created_at: float
    files: dict[str, str]      # name -> sha256
    body: dict[str, Any]       # everything else the writer put in the manifest

    def path(self, name: str) -> Path:
        if name not in self.files:
            raise NotFound(f"bundle {self.root} has no file {name!r}")
        return self.root / name

    def has(self, name: str) -> bool:
        return name in self.files


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def begin_bundle(out: Path) -> Path:
    out = Path(out)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def finalize_bundle(staging: Path, out: Path, body: dict[str, Any]) -> BundleManifest:
    """Hash every file in ``staging``, write the manifest, move the folder to ``out``.

    The version is ``v<unix time>-<first 8 hex of the combined hash>``."""
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file() and p.name != MANIFEST}
    combined = hashlib.sha256("".join(f"{k}:{v}" for k, v in files.items()).encode()).hexdigest()
    created = time.time()
    version = body.get("version") or f"v{int(created)}-{combined[:8]}"
    manifest = {"format": BUNDLE_FORMAT, "version": version, "created_at": created, "files": files, "content_hash": combined, **{k: v for k, v in body.items() if k != "version"}}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    out = Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
    return open_bundle(out, verify=False)


def open_bundle(root: str | Path, verify: bool = True) -> BundleManifest:
    """Read the manifest; with ``verify`` re-hash every file (corrupt -> ModelLoadError)."""
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.exists():
        raise NotFound(f"{root}: not a model bundle (no {MANIFEST}); train one with `feedrank train`")
    try:
        raw = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{mpath}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{mpath}: top level must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in ("version", "created_at", "files") if k not in raw]
    if missing:
        raise ModelLoadError(f"{mpath}: missing field(s) {', '.join(missing)}")
    if raw.get("format") != BUNDLE_FORMAT:
        raise ModelLoadError(f"{mpath}: bundle format {raw.get('format')!r}, this feedrank reads {BUNDLE_FORMAT}")
    files = dict(raw.get("files", {}))
    if verify:
        bad = []
        for name, digest in files.items():
            p = root / name
            if not p.exists():
                bad.append(f"{name}: missing")
            elif sha256_file(p) != digest:
                bad.append(f"{name}: sha256 mismatch (file changed or corrupt)")
        if bad:
            raise ModelLoadError(f"bundle {root} failed verification: " + "; ".join(bad))
    body = {k: v for k, v in raw.items() if k not in ("format", "version", "created_at", "files")}
    return BundleManifest(root=root, version=str(raw["version"]), created_at=float(raw["created_at"]), files=files, body=body)
