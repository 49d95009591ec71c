"""Per-request hand-off between the worker processes of ``feedrank serve --workers N``
(``serving.offload``, off by default: its p99 gain did not hold up from one A/B to the next
on the 2-core bench machine, benchmarks/README.md rounds 5 and 8): a feed request that would
wait behind others in a busy worker is computed by a worker with a shorter queue instead.

Why: a client's keep-alive connection stays on the worker that accepted it, and a worker
runs one feed pipeline at a time (inline on its event loop). Two workers are then two
separate queues: a burst on one worker's connections waits behind its pipeline while the
other worker idles. A queueing model (``benchmarks/queue_sim.py``) puts the p99 of two
separate queues at about 1.5x that of the hand-off at the same CPU per request; on the
bench machine a paired A/B of round 5 did not move p99; in round 8 one A/B of ten servers
lowered it (median 90 -> 67 ms at 300 rps) and the next, of six, did not (67 -> 94 ms).

How:

* Every worker publishes on a small shared board (a file in the run's claims folder,
  mmapped; one 16-byte slot per worker: the number of feed requests it holds, waiting or
  running, and a heartbeat) and listens on a Unix socket ``offload-w<slot>.sock`` there.
* A feed request that reaches the fast path (serving/fastfeed.py) counts itself in (a
  ticket: its place in this worker's queue), then yields to the event loop once, so that
  the requests read in the same loop iteration count themselves too (a request of a user
  whose earlier request here is not answered yet counts in, and decides, only once it is:
  serving/fastfeed.py). Before any of them runs, each joins the shortest queue
  (``peer_to_join``): when a live peer has fewer
  requests (held there plus ours on the way) than are ahead of it here, it is written to
  that peer over the socket (user id, k, explain, deadline, request id, expiry, and the
  item ids this worker's state remembers showing the user, which the peer's feed leaves
  out as it does its own seen items; the fast path answers one user's requests in order,
  so these include every feed this worker answered for the user before) and the
  loop moves on. A request that stayed is still handed over at its turn when another one
  waits behind it and a peer holds none (``should_send``). The peer computes it with its
  own pipeline (its model and metrics), records the feed in its own state (seen items,
  engagement counters) but writes nothing to the log, and returns the JSON body; this
  worker writes it to the client.
* The sender logs the returned feed's impressions in its own partition and records its
  items in its own state (``_log_handed_over`` in serving/app.py: seen items, engagement
  counters), so the next feed on that connection does not repeat them. Impressions are
  logged only where the feed reaches the client: an answer that comes after the sender
  gave up (the request is then computed, and logged, by the sender) is never logged.
* A request handed over is never handed on. Workers not serving or silent for
  ``STALE_S`` are never chosen. A peer that refuses the connection, breaks it, answers
  anything but a feed, or does not answer within the budget (half the request's deadline,
  at most ``timeout_s``) costs one failed attempt and is left alone for ``RETRY_AFTER_S``:
  the request is computed here (no error reaches the client). The frame carries an
  absolute expiry (CLOCK_MONOTONIC, one clock for all processes of a boot): a peer that
  reads it later answers 504 without computing or logging it. A pooled
  connection that turns out dead (the peer restarted) is retried once on a fresh one.

Frames on the socket (both directions): a 4-byte little-endian length, then the payload.
Request payload: JSON ``[user_id, k, explain, deadline_ms | null, request_id, expiry_ns, seen]``
(``seen``: the item ids the sender's state remembers showing the user, least recently shown
first, the newest ``MAX_SEEN`` at most; a frame without it means none).
Reply: a 2-byte status (200; 500 when the pipeline failed; 503 shutting down; 504
expired) then the body bytes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("feedrank.serving")

BOARD_FILE = "offload.board"
_SLOT = struct.Struct("<qq")  # requests held (waiting or running), heartbeat (CLOCK_MONOTONIC ns; 0 = not serving)
_LEN = struct.Struct("<I")
_STATUS = struct.Struct("<H")
STALE_S = 1.0  # a worker whose heartbeat is older is not sent requests
TICK_S = 0.05  # heartbeat period
TIMEOUT_S = 2.0  # a reply slower than this is abandoned: the request is computed locally
MAX_FRAME = 1 << 24  # 16 MiB: a feed body is a few KiB
RETRY_AFTER_S = 1.0  # after a failed connect or exchange, a peer is left alone this long

Args = tuple[str, int, bool, "float | None", str]
# (user_id, k, explain, deadline, request id, the sender's seen item ids for the user) -> (status, body)
Compute = Callable[[str, int, bool, "float | None", str, "tuple[str, ...]"], tuple[int, bytes]]
MAX_SEEN = 2000  # seen item ids a frame carries at most (pipeline.seen_memory is 500 by default)


class PeerDeclined(ConnectionError):
    """The peer answered without a feed (it failed, shut down, or the request expired there)."""


def socket_path(claims_dir: str | Path, slot: int) -> Path:
    return Path(claims_dir) / f"offload-w{slot}.sock"


class OffloadBoard:
    """Held-request counts of the N workers in one shared, mmapped file; this process
    writes only its own slot (8-byte aligned words: a reader never sees a torn value)."""

    def __init__(self, path: str | Path, workers: int, slot: int) -> None:
        from feedrank.serving.balance import map_board  # one board file format (uvicorn is imported there)

        self.path, self.workers, self.slot = Path(path), int(workers), int(slot)
        self._map = map_board(self.path, workers, slot, _SLOT.size)
        self._others = [s for s in range(self.workers) if s != self.slot]

    def publish(self, held: int, *, serving: bool = True) -> None:
        _SLOT.pack_into(self._map, self.slot * _SLOT.size, int(held), time.monotonic_ns() if serving else 0)

    def read(self, slot: int) -> tuple[int, float | None]:
        """(requests held, seconds since its heartbeat or None when that worker is not serving)."""
        held, beat = _SLOT.unpack_from(self._map, slot * _SLOT.size)
        return held, (None if beat == 0 else (time.monotonic_ns() - beat) / 1e9)

    def least_loaded_peer(self, extra: dict[int, int], skip: Callable[[int], bool] = lambda _s: False,
                          stale_s: float = STALE_S) -> tuple[int, int] | None:
        """(slot, load) of the live other worker with the smallest load: requests it holds
        plus ``extra[slot]`` (ours on the way to it); ties to the first slot after this one."""
        now = time.monotonic_ns()
        limit = int(stale_s * 1e9)
        n = self.workers
        best = None
        for step in range(1, n):
            s = (self.slot + step) % n
            held, beat = _SLOT.unpack_from(self._map, s * _SLOT.size)
            if beat and now - beat <= limit and not skip(s):
                load = max(int(held), 0) + extra.get(s, 0)
                if best is None or load < best[1]:
                    best = (s, load)
        return best

    def idle_peer(self, skip: Callable[[int], bool] = lambda _s: False, stale_s: float = STALE_S) -> int | None:
        """A live other worker that holds no request (the first such slot after this one,
        so that N workers spread their hand-offs), or None."""
        best = self.least_loaded_peer({}, skip, stale_s)
        return best[0] if best is not None and best[1] == 0 else None


class Offload:
    """One worker's side of the hand-off: the board, its own socket server and its
    connections to the peers. Created in the worker before the server starts
    (``attach_offload``); ``start`` runs on the worker's event loop. The fast path calls
    ``arrive`` / ``depart`` around each feed request, ``should_send`` when its turn comes,
    and ``send`` to hand it over."""

    def __init__(self, claims_dir: str | Path, workers: int, slot: int, timeout_s: float = TIMEOUT_S) -> None:
        self.claims_dir, self.workers, self.slot = Path(claims_dir), int(workers), int(slot)
        self.board = OffloadBoard(self.claims_dir / BOARD_FILE, workers, slot)
        self.timeout_s = float(timeout_s)
        self._queue: list[int] = []  # tickets of the feed requests held here (waiting or running), in arrival order
        self._seq = 0
        self.compute: Compute | None = None  # the fast path's pipeline call (registered by it)
        self.sent = self.received = self.failed = self.expired = 0
        self._idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._avoid_until: dict[int, float] = {}
        self._in_flight: dict[int, int] = {}  # requests sent to a peer and not answered yet
        self._serving: set[asyncio.StreamWriter] = set()  # peers' connections to this worker
        self._server: asyncio.AbstractServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Listen on this worker's socket and start the heartbeat (on the worker's loop)."""
        self._loop = asyncio.get_running_loop()
        path = socket_path(self.claims_dir, self.slot)
        try:
            path.unlink()  # a socket file left by a dead worker of this slot
        except FileNotFoundError:
            pass
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        except OSError as exc:  # e.g. a path over the 107-byte limit of Unix sockets: serve without hand-off
            log.warning("worker %d: request hand-off off, cannot listen on %s: %s", self.slot, path, exc)
            self.close()
            return
        self._tick()
        log.info("worker %d: request hand-off on %s", self.slot, path)

    def _tick(self) -> None:
        if self.closed or self._loop is None:
            return
        self.board.publish(self.held)
        self._timer = self._loop.call_later(TICK_S, self._tick)

    def close(self) -> None:
        """Leave the board and stop listening (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.board.publish(0, serving=False)
        if self._server is not None:
            self._server.close()
        for w in list(self._serving):  # their handlers see the end of input and return
            w.close()
        for conns in self._idle.values():
            for _r, w in conns:
                w.close()
        self._idle.clear()

    # ------------------------------------------------------------------ counting
    def arrive(self) -> int:
        """Count a request in; returns its ticket (its place in this worker's queue)."""
        self._seq += 1
        self._queue.append(self._seq)
        self.board.publish(self.held)
        return self._seq

    def depart(self, ticket: int) -> None:
        self._queue.remove(ticket)
        self.board.publish(self.held)

    @property
    def held(self) -> int:
        """Feed requests in this process: waiting or running here."""
        return len(self._queue)

    def peer_to_join(self, ticket: int) -> int | None:
        """Join the shortest queue: the peer to hand this request to when fewer requests are
        at that peer (held there, or ours on the way) than ahead of it here. Decided before
        any of the requests read with it starts (serving/fastfeed.py)."""
        if self.closed or self._loop is None or self.compute is None:
            return None
        ahead = self._queue.index(ticket)
        if ahead < 1:
            return None
        now = self._loop.time()
        best = self.board.least_loaded_peer(self._in_flight, skip=lambda s: self._avoid_until.get(s, 0.0) > now)
        return best[0] if best is not None and best[1] < ahead else None

    def should_send(self) -> int | None:
        """The peer to hand the request at the head of this worker's queue to: only when
        another request waits behind it here and a live peer holds none (and has none of
        ours on the way: its count rises only once it has read the request)."""
        if self.held < 2 or self.closed or self._loop is None or self.compute is None:
            return None
        now = self._loop.time()
        best = self.board.least_loaded_peer(self._in_flight, skip=lambda s: self._avoid_until.get(s, 0.0) > now)
        return best[0] if best is not None and best[1] == 0 else None

    # ------------------------------------------------------------------ client side
    def waiting_reply(self) -> bool:
        """Whether a request of this worker is at a peer now (its reply is read between two
        turns of the loop, so a local pipeline should not start in the same turn)."""
        return any(self._in_flight.values())

    async def send(self, peer: int, args: Args, budget_s: float | None = None,
                   seen: tuple[str, ...] = ()) -> tuple[int, bytes] | None:
        """Have ``peer`` compute the feed for ``args`` within ``budget_s`` (at most
        ``timeout_s``): (200, body), or None when the peer could not answer with a feed in
        time (the caller computes it). The frame carries the absolute expiry, so a peer that
        reads it too late drops it without computing or logging anything, and ``seen``
        (the item ids this worker showed the user), which the peer's feed leaves out."""
        limit = self.timeout_s if budget_s is None else max(0.001, min(self.timeout_s, float(budget_s)))
        expiry_ns = time.monotonic_ns() + int(limit * 1e9)
        payload = orjson.dumps([*args, expiry_ns, list(seen[-MAX_SEEN:])])
        frame = _LEN.pack(len(payload)) + payload
        self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        try:
            for attempt in (0, 1):  # a pooled connection may be to a peer that restarted: one fresh retry
                conn, reused = None, False
                try:
                    async with asyncio.timeout(max(0.0, (expiry_ns - time.monotonic_ns()) / 1e9)):
                        conn, reused = await self._connection(peer)
                        conn[1].write(frame)  # a pooled connection writes at once, before this turn's local work
                        reply = await _read_frame(conn[0])
                    if len(reply) < _STATUS.size:
                        raise ConnectionError(f"short reply ({len(reply)} bytes)")
                    status = _STATUS.unpack_from(reply)[0]
                    if self.closed:
                        conn[1].close()
                    else:
                        self._idle.setdefault(peer, []).append(conn)
                    if status != 200:  # the peer failed or dropped it: never a client error, computed here
                        return self._failed(peer, PeerDeclined(f"the peer answered status {status}"))
                    self.sent += 1
                    return status, reply[_STATUS.size:]
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    if conn is not None:
                        conn[1].close()
                    if reused and attempt == 0:
                        continue  # the peer never read it (a dead connection): nothing was computed there
                    return self._failed(peer, exc)
                except (OSError, TimeoutError, ValueError) as exc:
                    if conn is not None:
                        conn[1].close()
                    return self._failed(peer, exc)
                except BaseException:  # cancelled mid-exchange: the connection's next reply is not ours
                    if conn is not None:
                        conn[1].close()
                    raise
            return None
        finally:
            self._in_flight[peer] -= 1

    def _failed(self, peer: int, exc: BaseException) -> None:
        self.failed += 1
        if self._loop is not None:
            self._avoid_until[peer] = self._loop.time() + RETRY_AFTER_S
        log.warning("request hand-off to worker %d failed (%s: %s); computing it here", peer, type(exc).__name__, exc)
        return None

    async def _connection(self, peer: int) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], bool]:
        """(reader, writer) to ``peer``, and whether it is a pooled one."""
        idle = self._idle.get(peer)
        while idle:
            reader, writer = idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return (reader, writer), True
            writer.close()
        return await asyncio.open_unix_connection(str(socket_path(self.claims_dir, peer))), False

    # ------------------------------------------------------------------ server side
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._serving.add(writer)
        try:
            while True:
                try:
                    payload = await _read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the peer closed the connection
                try:
                    user_id, k, explain, deadline, rid, expiry_ns, *rest = orjson.loads(payload)
                    args: Args = (str(user_id), int(k), bool(explain), None if deadline is None else float(deadline), str(rid))
                    expiry_ns = int(expiry_ns)
                    if len(rest) > 1 or (rest and not isinstance(rest[0], list)):
                        raise ValueError("the seen items must be one list")
                    seen = tuple(str(s) for s in rest[0][-MAX_SEEN:]) if rest else ()  # the newest
                except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                    log.error("request hand-off: malformed frame from a peer (%s); closing the connection", exc)
                    return
                compute = self.compute
                if compute is None or self.closed:
                    status, body = 503, b""
                elif time.monotonic_ns() >= expiry_ns:  # the sender has given up on it: not computed, not logged
                    self.expired += 1
                    status, body = 504, b""
                else:
                    ticket = self.arrive()
                    try:
                        status, body = compute(*args, seen)
                    finally:
                        self.depart(ticket)
                    self.received += 1
                reply = _STATUS.pack(status) + body
                writer.write(_LEN.pack(len(reply)) + reply)
                await writer.drain()
        except ConnectionError:  # the sender went away (it gave up on the request, or shut down)
            log.debug("request hand-off: a peer connection closed mid-reply")
        except Exception:  # never let one peer connection take the worker down
            log.exception("request hand-off: serving a peer failed")
        finally:
            self._serving.discard(writer)
            try:
                writer.close()
            except RuntimeError:  # the loop is already closed (process exit)
                pass

    def stats(self) -> dict[str, Any]:
        return {"slot": self.slot, "held": self.held, "sent": self.sent, "received": self.received, "failed": self.failed,
                "expired": self.expired}


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(_LEN.size)
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes (limit {MAX_FRAME})")
    return await reader.readexactly(n)


# --- the worker side: set by serving/workers.py once the worker knows its slot ----------

_offload: Offload | None = None


def attach_offload(claims_dir: str | Path, workers: int, slot: int) -> Offload:
    """Join the run's hand-off board as ``slot`` (called in the worker before its server starts)."""
    global _offload
    _offload = Offload(claims_dir, workers, slot)
    return _offload


def worker_offload() -> Offload | None:
    return _offload


async def start_worker_offload() -> None:
    """Start this worker's hand-off (listener + heartbeat) if one is attached (serving/balance.py
    calls it after the app's startup, on the worker's loop)."""
    if _offload is not None and not _offload.closed and _offload._server is None:
        await _offload.start()


def close_worker_offload() -> None:
    if _offload is not None:
        _offload.close()

