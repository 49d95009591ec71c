"""`feedrank serve --workers 2` splits a burst of persistent connections evenly between its
workers (serving/balance.py), where the kernel alone hands most of them to one worker."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

if not Path("/proc/net/tcp").exists():  # pragma: no cover
    pytest.skip("needs Linux /proc to see which worker owns a connection", allow_module_level=True)


def _established_inodes(port: int) -> set[str]:
    """Socket inodes of established TCP connections whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def _owned(pid: int, inodes: set[str]) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:[") and str(target)[8:-1] in inodes:
            n += 1
    return n


def _owner(port: int, workers: list[int]) -> int | None:
    """The worker that answers a fresh connection (kept open while we look)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.recv(64).startswith(b"HTTP/1.1 200")
        inodes = _established_inodes(port)
        return next((p for p in workers if _owned(p, inodes)), None)


def test_a_burst_of_keepalive_connections_is_split_evenly(two_workers):
    port = int(two_workers.url.rsplit(":", 1)[1])
    workers = [int(p) for p in Path(f"/proc/{two_workers.proc.pid}/task/{two_workers.proc.pid}/children").read_text().split()]
    # the board does not wait for a worker that has not started, so first see both serve
    seen: set[int | None] = set()
    deadline = time.monotonic() + 120
    while len(seen - {None}) < 2:
        assert time.monotonic() < deadline, f"both workers never answered: {seen}"
        seen.add(_owner(port, workers))
        time.sleep(0.05)
    time.sleep(0.1)  # the closed probe connections leave the board
    clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(12)]  # all at once, as a pool does
    try:
        for c in clients:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for c in clients:
            assert c.recv(64).startswith(b"HTTP/1.1 200")  # answered: the connection is on a worker
        inodes = _established_inodes(port)
        split = sorted(_owned(p, inodes) for p in workers)
        split = [n for n in split if n]  # the supervisor's helper processes own none
        assert sum(split) == 12 and len(split) == 2 and max(split) - min(split) <= 2, split
    finally:
        for c in clients:
            c.close()
    time.sleep(0.1)
