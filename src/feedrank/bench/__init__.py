"""Benchmark scenarios behind `feedrank bench ...`; results land in benchmarks/results/.

Every result file records the machine it ran on (CPU model, cores, memory, torch and
faiss versions, threads) so figures from different machines are never mixed up.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(os.environ.get("FEEDRANK_BENCH_RESULTS", "benchmarks/results"))


def machine_info() -> dict[str, Any]:
    import faiss
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": getattr(faiss, "__version__", "unknown"),
        "platform": platform.platform(),
    }


def write_result(name: str, payload: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``<name>.json`` (latest) and ``<name>-<utc stamp>.json`` (history)."""
    out_dir = Path(results_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    doc = {"benchmark": name, "created_utc": stamp, "machine": machine_info(), **payload}
    text = json.dumps(doc, indent=2, sort_keys=True, default=float)
    (out_dir / f"{name}-{stamp}.json").write_text(text + "\n")
    latest = out_dir / f"{name}.json"
    latest.write_text(text + "\n")
    return latest
