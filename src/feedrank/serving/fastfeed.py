"""A direct ASGI path for ``GET /v1/feed``: the hot endpoint skips routing, dependency
injection and the middleware stack.

    app.add_middleware(FeedFastPath, feed=feed_bytes, metrics=metrics, max_k=50, default_k=20,
                       max_deadline_ms=150.0, inline=True)

It answers a well-formed feed request itself and hands *everything else* to the wrapped
app unchanged: other paths and methods, and any feed request whose query or headers it
does not accept at a glance (a missing or blank ``user_id``, a ``k`` that is not plain
digits in range, an unusual ``explain`` or ``X-Deadline-Ms`` spelling, a bad
``X-Request-Id``). The FastAPI route then answers those, with its usual 422 bodies and
OpenAPI documentation, so the two paths cannot disagree on what is valid: the fast path
only ever accepts a subset of what the route accepts, and produces the same body.

``inline=True`` runs the pipeline on the event loop thread (no thread-pool hand-off, no
GIL ping-pong between threads: the right choice for CPU-bound workers, one per core).
With micro-batching on, requests must overlap to be batched, so the server passes
``inline=False`` and the pipeline runs in the thread pool.

Measured costs and the reasoning are in benchmarks/README.md ("Serving: where a request's
CPU goes").
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from feedrank.serving.logs import request_id_var
from feedrank.serving.metrics import ServingMetrics
from feedrank.serving.offload import Offload, worker_offload

log = logging.getLogger("feedrank.serving")

PATH = "/v1/feed"
_NUMBER = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9})?$")  # plain decimal ms; anything fancier goes to the route
_TRUE = {"true": True, "1": True, "false": False, "0": False}
FeedFn = Callable[[str, int, bool, "float | None", str], bytes]


class Foreground:
    """Whether this process's event loop is running a request's pipeline right now. A
    background thread that can wait (the live consumer, features/consumer.py) checks
    ``busy()`` between its slices and sleeps while it is true, so the request keeps the
    GIL. Written only on the event-loop thread (inline mode)."""

    def __init__(self) -> None:
        self.active = 0

    def busy(self) -> bool:
        return self.active > 0


class FeedFastPath:
    """Pure ASGI middleware; see the module docstring.

    ``feed(user_id, k, explain, x_deadline_ms | None, request_id) -> JSON bytes`` is the
    same function the FastAPI route calls. ``valid_request_id(rid) -> bool`` is the
    route's own check. With hand-off (serving/offload.py): ``feed_for_peer`` (the same
    arguments, then the sender's seen item ids for the user, which the feed leaves out;
    default ``feed``, which ignores them) computes a feed another worker handed over
    without writing its impressions to the log; ``seen_of(user_id)`` gives this worker's
    seen item ids for a request it hands over; and ``log_handed_over(user_id, request_id, body,
    arrived)`` logs a feed a peer computed for this worker once it is here, about to be
    sent (``arrived``: when the request reached this worker, epoch s): a feed is logged
    only where it reaches the client, never for an answer that came too late."""

    def __init__(self, app: ASGIApp, feed: FeedFn, metrics: ServingMetrics, max_k: int, default_k: int,
                 valid_request_id: Callable[[str], bool], inline: bool = True,
                 foreground: Foreground | None = None, offload: Offload | None = None,
                 deadline_ms: float | None = None,
                 log_handed_over: Callable[[str, str, bytes, float], None] | None = None,
                 feed_for_peer: Callable[[str, int, bool, "float | None", str, tuple[str, ...]], bytes] | None = None,
                 seen_of: Callable[[str], Sequence[str]] | None = None) -> None:
        self.app = app
        self.foreground = foreground if foreground is not None else Foreground()
        self.feed = feed
        self.feed_for_peer = (lambda u, k, e, d, r, _seen: feed(u, k, e, d, r)) if feed_for_peer is None else feed_for_peer
        self.seen_of = seen_of
        # per user, the (future of the) last hand-off-path request that came in: one user's requests
        # are decided and answered in order, so each knows what the ones before it showed
        self._user_tail: dict[str, asyncio.Future] = {}
        self.max_k = int(max_k)
        self.default_k = int(default_k)
        self.valid_request_id = valid_request_id
        self.inline = inline
        self._latency = metrics.request_latency.labels(endpoint=PATH)
        self._ok = metrics.responses.labels(endpoint=PATH, status="200")
        self._responses = metrics.responses  # the 500 series appears only when one happens
        self._offload = metrics.offload
        self.served = 0  # requests answered here (tests read it)
        # per-request hand-off to an idle worker (serving/offload.py): inline workers only
        self.offload = (offload if offload is not None else worker_offload()) if inline else None
        if self.offload is not None:
            self.offload.compute = self._compute_handed_over
        self.deadline_ms = deadline_ms  # the server's default deadline (a header can only lower it)
        # (user_id, request id, body, arrival time) of a feed another worker computed for this
        # one: this worker logs its impressions and records what the user was shown (seen
        # items, engagement counters)
        self.log_handed_over = log_handed_over

    def parse(self, scope: Scope) -> tuple[str, int, bool, float | None, str | None] | None:
        """(user_id, k, explain, x_deadline_ms, request id or None) of a request the fast path
        accepts, or None to let the route answer it."""
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        user_id = params.get("user_id")
        if user_id is None or not (0 < len(user_id) <= 256) or not user_id.strip():
            return None
        k = self.default_k
        raw_k = params.get("k")
        if raw_k is not None:
            if not (raw_k.isascii() and raw_k.isdigit() and len(raw_k) <= 6):
                return None
            k = int(raw_k)
            if not 1 <= k <= self.max_k:
                return None
        explain = False
        raw_explain = params.get("explain")
        if raw_explain is not None:
            explain = _TRUE.get(raw_explain.lower())  # type: ignore[assignment]
            if explain is None:
                return None
        deadline = rid = None
        for name, value in scope.get("headers", ()):
            if name == b"x-deadline-ms":
                text = value.decode("latin-1")
                if not _NUMBER.match(text):
                    return None
                deadline = float(text)
                if not (deadline > 0 and math.isfinite(deadline)):
                    return None
            elif name == b"x-request-id":
                rid = value.decode("latin-1")
                if not self.valid_request_id(rid):
                    return None
        return user_id, k, bool(explain), deadline, rid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        parsed = self.parse(scope)
        if parsed is None:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        user_id, k, explain, deadline, rid = parsed
        rid = rid or uuid.uuid4().hex
        token = request_id_var.set(rid)
        counter = None
        try:
            if self.offload is not None:
                status, body = await self._offload_or_compute(self.offload, (user_id, k, explain, deadline, rid))
            elif self.inline:
                status, body = self._compute(user_id, k, explain, deadline, rid)
            else:
                status, body = await run_in_threadpool(self._compute, user_id, k, explain, deadline, rid)
            if status == 200:
                counter = self._ok
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"x-request-id", rid.encode("latin-1"))]})
            await send({"type": "http.response.body", "body": body})
            self.served += 1
        finally:
            self._latency.observe(time.perf_counter() - t0)
            (counter or self._responses.labels(endpoint=PATH, status="500")).inc()
            request_id_var.reset(token)

    def _compute(self, user_id: str, k: int, explain: bool, deadline: float | None, rid: str,
                 feed: FeedFn | None = None) -> tuple[int, bytes]:
        """(status, body) of one feed computed in this process with ``feed`` (default
        ``self.feed``; ``feed_for_peer`` for requests handed over by another worker)."""
        feed = self.feed if feed is None else feed
        try:
            if self.inline:
                self.foreground.active += 1
                try:
                    return 200, feed(user_id, k, explain, deadline, rid)
                finally:
                    self.foreground.active -= 1
            return 200, feed(user_id, k, explain, deadline, rid)
        except Exception as exc:  # same contract as the route: a logged 500 with the request id
            log.exception("unhandled error: %s", type(exc).__name__,
                          extra={"request_id": rid, "path": PATH, "method": "GET"})
            return 500, orjson.dumps({"detail": "internal server error", "error": type(exc).__name__, "request_id": rid})

    def _compute_handed_over(self, user_id: str, k: int, explain: bool, deadline: float | None, rid: str,
                             seen: tuple[str, ...] = ()) -> tuple[int, bytes]:
        """``_compute`` for a request another worker handed over (``seen``: the item ids that
        worker showed the user), with its request id in the logs."""
        token = request_id_var.set(rid)
        try:
            return self._compute(user_id, k, explain, deadline, rid,
                                 lambda u, k_, e, d, r: self.feed_for_peer(u, k_, e, d, r, seen))
        finally:
            request_id_var.reset(token)
            self._offload.labels(result="received").inc()

    async def _offload_or_compute(self, off: Offload, args: tuple) -> tuple[int, bytes]:
        """Count the request in and let the requests read with it count in too (one loop
        turn); hand it to a peer with fewer requests than are ahead of it here (or, at its
        turn, to an idle peer when another request waits behind it), else compute it here
        (serving/offload.py). A request first waits for the user's previous one in this worker
        to be answered (here or by a peer), so that the seen items it computes with, or sends
        along, include that feed's."""
        arrived = time.time()  # when the request reached this worker: its impressions' time if a peer computes it
        user = args[0]
        prev = self._user_tail.get(user)
        mine = asyncio.get_running_loop().create_future()
        self._user_tail[user] = mine
        ticket, held = 0, False
        try:
            if prev is not None and not prev.done():
                # not cancelled with this task (the earlier request owns it); counted in only after
                # it: a request blocked behind its user's earlier one is no work this worker can do
                await asyncio.wait((prev,))
            ticket = off.arrive()
            held = True
            await asyncio.sleep(0)  # the requests read with this one count in too
            peer = off.peer_to_join(ticket)  # shorter queue at a peer than ahead of it here
            if peer is None:
                await asyncio.sleep(0)  # every request of the burst decides before the first one runs
                peer = off.should_send()  # at its turn: another waits behind it and a peer idles
            if peer is not None:
                off.depart(ticket)
                held = False
                seen: tuple[str, ...] = ()
                if self.seen_of is not None:
                    try:
                        seen = tuple(self.seen_of(args[0]))
                    except Exception:  # the hand-off still goes; the peer's own seen items apply
                        log.exception("reading the seen items for a hand-off failed", extra={"request_id": args[4]})
                got = await off.send(peer, args, budget_s=self._hand_off_budget_s(args[3]), seen=seen)
                self._offload.labels(result="failed" if got is None else "sent").inc()
                if got is not None:
                    if self.log_handed_over is not None:
                        try:
                            self.log_handed_over(args[0], args[4], got[1], arrived)
                        except Exception:  # the client still gets its feed
                            log.exception("logging a handed-over feed failed", extra={"request_id": args[4]})
                    return got
                ticket = off.arrive()  # the peer could not answer with a feed: computed here after all
                held = True
            if off.waiting_reply():  # let a peer's reply be read before this pipeline holds the loop
                await asyncio.sleep(0)
            return self._compute(*args)
        finally:
            if held:
                off.depart(ticket)
            if prev is not None and not prev.done():  # cancelled while it waited: the next one still follows prev
                prev.add_done_callback(lambda _f: self._release_user(user, mine))
            else:
                self._release_user(user, mine)

    def _release_user(self, user: str, mine: asyncio.Future) -> None:
        """Let the user's next request in this worker go on (``_offload_or_compute``)."""
        if not mine.done():
            mine.set_result(None)
        if self._user_tail.get(user) is mine:
            del self._user_tail[user]

    def _hand_off_budget_s(self, header_deadline_ms: float | None) -> float | None:
        """How long a handed-over request may take at the peer: half its deadline (the other
        half is left for computing it here if the peer does not answer)."""
        ms = [d for d in (header_deadline_ms, self.deadline_ms) if d is not None]
        return None if not ms else 0.5 * min(ms) / 1000.0
