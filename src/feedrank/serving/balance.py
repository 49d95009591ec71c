"""Least-connections accept across the worker processes of ``feedrank serve --workers N``
(``serving.balance_connections``, on by default).

The workers share one listening socket (bound once by uvicorn's supervisor). Left to
the kernel, every idle worker wakes on a new connection and the first to call
``accept()`` takes it, together with the rest of a burst: clients that keep their
connections open (a load balancer's pool, wrk's 32) land 31 / 1 or 24 / 8 on two
workers, and the busier one becomes the node's bottleneck while the other idles
(``benchmarks/serve_balance.py``; benchmarks/README.md, "Per-worker load balance").

Here each worker publishes its number of open connections on a small shared board (a
file in the run's claims folder, mmapped: one 24-byte slot per worker, the count, a
heartbeat and a "has served" flag) and accepts only while it has no more than the least-loaded *live* worker;
otherwise it stops watching the socket until the others catch up, and the kernel's queue
holds the connection for a worker that does watch it. At least one live worker always
accepts (the least loaded one), so a connection waits at most for that worker's current
request. A worker whose heartbeat is older than ``STALE_S`` (dead, not started yet, or
its loop stalled) is left out of the comparison, so it cannot hold the others back.

The board also tells ``/readyz`` whether every worker has started (serving/app.py): a
node whose second worker is still loading the model would otherwise be sent its whole
share of connections by a client that waits for readiness, and they would all land on
the first worker.

Only *where* a connection is accepted changes: the HTTP protocol, keep-alive, graceful
shutdown and uvicorn's supervisor (restarts, health checks) are uvicorn's own. Requests of
one keep-alive connection still go to one worker (docs/api.md, "Workers").
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
import uvicorn.supervisors.multiprocess as _mp
from uvicorn.config import STARTUP_FAILURE

from feedrank.errors import FeedrankError

log = logging.getLogger("feedrank.serving")

BOARD_FILE = "connections.board"
# open connections, heartbeat (CLOCK_MONOTONIC ns; 0 = not serving), when the slot's worker
# first served (CLOCK_MONOTONIC ns, 0 = never; kept when it stops: a restart does not make
# the node "not started"). CLOCK_MONOTONIC is one clock for all processes of a boot.
_SLOT = struct.Struct("<qqq")
STALE_S = 1.0  # a worker silent this long is not waited for
READY_GRACE_S = 300.0  # /readyz: after this long since the first worker served, the node is ready without the missing ones
ACCEPT_FAILURE_S = 1.0  # after a failed accept(), the worker is not advertised as live this long
TICK_S = 0.02  # publish the count and re-check a paused accept this often
MAX_ACCEPTS_PER_WAKE = 16
TESTED_UVICORN = "0.54."  # this module extends uvicorn's supervisor and Server.startup (pyproject pins it)


def map_board(path: Path, workers: int, slot: int, slot_size: int) -> mmap.mmap:
    """A shared board of ``workers`` slots of ``slot_size`` bytes in the file ``path``
    (created, zero-filled), mapped read-write; ``slot`` is this process's own."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0 <= slot < workers:
        raise ValueError(f"slot must be in 0..{workers - 1}, got {slot}")
    size = slot_size * workers
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)  # zeros; several workers doing it at once is harmless
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


class ConnectionBoard:
    """Open-connection counts of the N workers in one shared, mmapped file; this process
    writes only its own slot. Counts are 8-byte aligned words: a reader sees an old or a
    new value, never a torn one, and a stale value only delays a decision by a tick."""

    def __init__(self, path: str | Path, workers: int, slot: int) -> None:
        self.path, self.workers, self.slot = Path(path), int(workers), int(slot)
        self._map = map_board(self.path, workers, slot, _SLOT.size)
        self._others = [s for s in range(self.workers) if s != self.slot]

    closed = False

    def publish(self, connections: int, *, serving: bool = True) -> None:
        now = time.monotonic_ns()
        first = self._started(self.slot)
        _SLOT.pack_into(self._map, self.slot * _SLOT.size, int(connections), now if serving else 0,
                        (first or now) if serving else first)

    def _started(self, slot: int) -> int:
        return _SLOT.unpack_from(self._map, slot * _SLOT.size)[2]

    def read(self, slot: int) -> tuple[int, float | None]:
        """(connections, seconds since its heartbeat, or None when that worker is not serving)."""
        count, beat, _ = _SLOT.unpack_from(self._map, slot * _SLOT.size)
        return count, (None if beat == 0 else (time.monotonic_ns() - beat) / 1e9)

    def started(self) -> int:
        """How many of the workers have served at some point (all of them: the node is up)."""
        return sum(1 for s in range(self.workers) if self._started(s))

    def readiness_problem(self, grace_s: float = READY_GRACE_S) -> str | None:
        """Why the node is not ready yet (None: ready). Ready once every worker has served,
        so that a client waiting for readiness does not put all its connections on the
        first worker up; or, ``grace_s`` after the first worker served, with those that
        did (a worker that never starts, e.g. out of memory on load, must not keep the node
        out of rotation forever). Also not ready while this worker shuts down."""
        if self.closed:
            return "worker: shutting down"
        firsts = [self._started(s) for s in range(self.workers)]
        up = [f for f in firsts if f]
        if len(up) == self.workers:
            return None
        if up and (time.monotonic_ns() - min(up)) / 1e9 >= grace_s:
            return None
        return f"workers: {len(up)} of {self.workers} started"

    def least_other(self, stale_s: float = STALE_S) -> int | None:
        """The fewest open connections among the other live workers (None: no other is live)."""
        now = time.monotonic_ns()
        limit = int(stale_s * 1e9)
        least = None
        for s in self._others:
            count, beat, _ = _SLOT.unpack_from(self._map, s * _SLOT.size)
            if beat and now - beat <= limit and (least is None or count < least):
                least = count
        return least

    def may_accept(self, mine: int) -> bool:
        least = self.least_other()
        return least is None or mine <= least

    def close(self) -> None:
        """Leave the board (other workers stop waiting for this one). The map stays open:
        /readyz still reads it while open connections drain; it goes with the process."""
        if not self.closed:
            self.publish(0, serving=False)
            self.closed = True


class BalancedAcceptor:
    """Accepts connections on a listening socket shared with other processes only while
    ``board.may_accept(open connections)``, and hands each to ``loop.connect_accepted_socket``
    with uvicorn's protocol factory. Quacks like the ``asyncio.Server`` uvicorn keeps in
    ``Server.servers`` (``close()``, ``wait_closed()``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol_factory: Callable[[], Any],
                 open_connections: Callable[[], int], board: ConnectionBoard, *, ssl: Any = None,
                 tick_s: float = TICK_S) -> None:
        self._loop, self._sock, self._factory = loop, sock, protocol_factory
        self._open, self._board, self._ssl, self._tick_s = open_connections, board, ssl, float(tick_s)
        self._fd = sock.fileno()
        sock.setblocking(False)
        self._logged_at = -1e18
        self._tasks: set[asyncio.Task] = set()  # attaching connections (the loop keeps only weak references)
        self._inflight = 0  # accepted, protocol not attached yet
        self._watching = False
        self._closed = False
        self._failed_until = 0.0  # loop time: until then this worker is not advertised as live (accept failed)
        self.accepted = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tick()

    def connections(self) -> int:
        return self._open() + self._inflight

    def _tick(self) -> None:
        if self._closed:
            return
        n = self.connections()
        self._board.publish(n, serving=self._loop.time() >= self._failed_until)
        if not self._watching and self._board.may_accept(n):
            self._loop.add_reader(self._fd, self._on_readable)
            self._watching = True
        self._timer = self._loop.call_later(self._tick_s, self._tick)

    def _pause(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _on_readable(self) -> None:
        # O_NONBLOCK belongs to the listening socket's open file description, which every
        # worker shares: one process that dups the socket or sets a timeout on it (Python's
        # socket.dup() does) would make this accept() block the loop when another worker
        # took the connection first. Re-asserted on each wake-up (one fcntl pair).
        self._sock.setblocking(False)
        for _ in range(MAX_ACCEPTS_PER_WAKE):
            if self._closed:
                return
            if not self._board.may_accept(self.connections()):
                self._pause()  # another worker has fewer: leave the connection to it
                return
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it, or the queue is empty
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of descriptors/memory (or worse): back off a tick, as asyncio does
                now = self._loop.time()
                if now - self._logged_at >= 1.0:  # at most once a second
                    self._logged_at = now
                    log.error("accept failed: %s; pausing accepts for %.0f ms", exc, 1000 * self._tick_s)
                # not live on the board for a while, so the other workers, which would wait
                # for this one's lower count, accept instead of the whole node stalling
                self._failed_until = now + ACCEPT_FAILURE_S
                self._board.publish(self.connections(), serving=False)
                self._pause()
                return
            self._failed_until = 0.0
            conn.setblocking(False)
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            self._inflight += 1
            self.accepted += 1
            self._board.publish(self.connections())
            task = self._loop.create_task(self._attach(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attach(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except BaseException as exc:  # the client went away between accept and attach, or shutdown cancelled it
            conn.close()
            if not isinstance(exc, Exception):
                raise
            log.warning("could not attach an accepted connection: %s: %s", type(exc).__name__, exc)
        finally:
            self._inflight -= 1

    def close(self) -> None:
        """Stop accepting (uvicorn's shutdown then closes the open connections)."""
        if self._closed:
            return
        self._closed = True
        self._pause()
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):  # still attaching: uvicorn's shutdown would not see these connections
            task.cancel()
        self._board.close()

    async def wait_closed(self) -> None:
        return None


# --- the worker side: set by serving/workers.py once the worker knows its slot ----------

_board: ConnectionBoard | None = None


def attach_board(claims_dir: str | Path, workers: int, slot: int) -> ConnectionBoard:
    """Join the run's board as ``slot`` (called in the worker before its server starts)."""
    global _board
    _board = ConnectionBoard(Path(claims_dir) / BOARD_FILE, workers, slot)
    return _board


def worker_board() -> ConnectionBoard | None:
    return _board


class BalancedServer(uvicorn.Server):
    """uvicorn's ``Server``; on sockets inherited from the supervisor with a board attached,
    it accepts through ``BalancedAcceptor`` instead of ``loop.create_server``. Everything
    else (lifespan, protocol, main loop, graceful shutdown) is uvicorn's."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self._startup(sockets)
        if self.started:  # per-request hand-off between workers (serving/offload.py), when attached
            from feedrank.serving.offload import start_worker_offload

            await start_worker_offload()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        from feedrank.serving.offload import close_worker_offload

        close_worker_offload()  # peers stop handing requests to this worker first
        await super().shutdown(sockets=sockets)

    async def _startup(self, sockets: list[socket.socket] | None) -> None:
        board = worker_board()
        if sockets is None or board is None:
            await super().startup(sockets=sockets)
            return
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(config=config, server_state=self.server_state,  # type: ignore[call-arg]
                                              app_state=self.lifespan.state, _loop=_loop)

        loop = asyncio.get_running_loop()
        for sock in sockets:
            sock.listen(config.backlog)  # bound by the supervisor; loop.create_server would listen here
        connections = self.server_state.connections
        self.servers = [BalancedAcceptor(loop, sock, create_protocol, connections.__len__, board,  # type: ignore[list-item]
                                         ssl=config.ssl) for sock in sockets]
        self.started = True


class BalancedProcess(_mp.Process):
    """uvicorn's worker process, running ``BalancedServer``."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = BalancedServer(config=self.config)
        return self._server


def run_supervisor(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """uvicorn's multi-process supervisor with ``BalancedServer`` workers (blocks)."""
    if (not uvicorn.__version__.startswith(TESTED_UVICORN) or not isinstance(getattr(_mp, "Process", None), type)
            or not hasattr(_mp.Multiprocess, "keep_subprocess_alive")):
        raise FeedrankError(f"uvicorn {uvicorn.__version__}: its supervisor is not the one serving/balance.py extends "
                            "(constraints.txt pins the tested version)")
    original = _mp.Process
    _mp.Process = BalancedProcess  # the supervisor builds (and restarts) workers through this name
    try:
        _mp.Multiprocess(config, sockets=sockets).run()
    finally:
        _mp.Process = original
