"""``feedrank serve`` as a child process in its own session, for the tests and benchmarks
that need the real multi-worker server (uvicorn's supervisor and its workers), not an
app in a thread (``server.BackgroundServer``).

    with start_serve(Path("var/demo/full/model"), events_dir=Path("/tmp/events"), workers=2) as srv:
        httpx.get(f"{srv.url}/v1/feed", params={"user_id": "u1"})

``start_serve`` returns once ``/readyz`` answers 200 and, with ``events_dir`` and several
workers, every worker's event partition (``w0``, ``w1``, ...) exists; leaving the ``with``
block stops the whole process group (SIGTERM, then SIGKILL after 30 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from feedrank.serving.metrics import MULTIPROC_ENV
from feedrank.serving.server import free_port


@dataclass
class ServeProcess:
    """A started ``feedrank serve``: its URL, events folder and stderr file."""

    proc: subprocess.Popen
    url: str
    events_dir: Path | None
    errlog: Path | None

    def stderr_tail(self, chars: int = 3000) -> str:
        if self.errlog is None or not self.errlog.exists():
            return ""
        return self.errlog.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM to the process group (workers flush and close their logs), SIGKILL after
        ``timeout_s``; the exit status."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.wait()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_serve(model: Path | str, *, workers: int = 1, events_dir: Path | None = None,
                overrides: tuple[str, ...] | list[str] = (), errlog: Path | None = None,
                timeout_s: float = 240.0) -> ServeProcess:
    """Start ``feedrank serve --model model`` on a free 127.0.0.1 port and wait until it is
    ready; ``overrides`` are ``section.key=value`` config overrides. The child gets no
    inherited ``PROMETHEUS_MULTIPROC_DIR`` (the server makes its own). Raises ``RuntimeError``
    (with the end of ``errlog``) when it exits or is not ready within ``timeout_s``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not Path(model).is_dir():
        raise FileNotFoundError(f"model bundle folder {model} does not exist")
    port = free_port()
    cmd = [sys.executable, "-m", "feedrank.cli.main", "serve", "--model", str(model), "--port", str(port),
           "--workers", str(workers), "--log-level", "warning", *overrides]
    if events_dir is not None:
        cmd[6:6] = ["--events-dir", str(events_dir)]
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
    with open(errlog or os.devnull, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    srv = ServeProcess(proc, f"http://127.0.0.1:{port}", events_dir, errlog)
    # with several workers each one opens its own partition (serving/workers.py) once it has started
    parts = [events_dir / f"w{i}" for i in range(workers)] if events_dir is not None and workers > 1 else []
    deadline = time.monotonic() + timeout_s
    while not (all(p.is_dir() for p in parts) and _ready(srv.url)):
        if proc.poll() is not None or time.monotonic() > deadline:
            srv.stop()
            raise RuntimeError(f"feedrank serve with {workers} worker(s) did not become ready (exit {proc.poll()}):\n"
                               f"{srv.stderr_tail()}")
        time.sleep(0.2)
    return srv
