"""A private ``redis-server`` on a free port of 127.0.0.1, for tests and benchmarks.

    srv = RedisServer.start(workdir)     # raises FileNotFoundError without redis-server
    srv.url                              # "redis://127.0.0.1:<port>"
    srv.pause(); srv.resume()            # SIGSTOP / SIGCONT: a store that hangs
    srv.kill(); srv.restart()            # SIGKILL, then a fresh (empty) server on the same port
    srv.stop()

The server keeps nothing on disk (``--save '' --appendonly no``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as c:
            c.sendall(b"PING\r\n")
            return c.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process (see the module docstring)."""

    def __init__(self, exe: str, port: int, workdir: Path) -> None:
        self.exe, self.port, self.workdir = exe, port, Path(workdir)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: str | Path, port: int | None = None, timeout_s: float = 10.0) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server not installed (make setup installs it: apt-get install -y redis-server)")
        Path(workdir).mkdir(parents=True, exist_ok=True)
        srv = cls(exe, port or free_port(), Path(workdir))
        srv._spawn(timeout_s)
        return srv

    def _spawn(self, timeout_s: float) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while not _pong(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.poll() is not None and self.proc.stdout else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}: {out[-2000:]}")
            time.sleep(0.05)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout_s: float = 10.0) -> None:
        """A fresh, empty server on the same port (after ``kill``)."""
        self.kill()
        self._spawn(timeout_s)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
