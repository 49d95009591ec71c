"""`feedrank demo --smoke` as CI runs it: a real process, its own server on a free port,
its own requests and checks; exit 0 only if every check passed."""

import subprocess
import sys
from pathlib import Path


def test_demo_smoke(tmp_path: Path):
    exe = Path(sys.executable).parent / "feedrank"
    proc = subprocess.run([str(exe), "demo", "--smoke", "--no-progress", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "smoke: all checks passed" in out
    assert out.count("feed for ") == 3
    assert "curl 'http://127.0.0.1:" in out
    assert (tmp_path / "smoke" / "model" / "manifest.json").exists()
    # the events the smoke test posted are durable on disk
    assert any((tmp_path / "smoke" / "events").glob("seg-*.jsonl"))
