"""Per-request hand-off between workers (serving/offload.py): the board's idle-peer choice,
a request computed by the peer over its Unix socket, and every failure falling back to
computing the request here; the fast path hands a request over only when another one
waits behind it and the peer is idle."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from feedrank.serving.fastfeed import FeedFastPath
from feedrank.serving.metrics import ServingMetrics
from feedrank.serving.offload import BOARD_FILE, Offload, OffloadBoard


def test_board_idle_peer_skips_busy_stale_and_stopped_workers(tmp_path):
    boards = [OffloadBoard(tmp_path / BOARD_FILE, 3, s) for s in range(3)]
    assert boards[0].idle_peer() is None  # nobody else has published: not live
    boards[1].publish(2)
    boards[2].publish(0)
    assert boards[0].idle_peer() == 2  # 1 is busy
    assert boards[0].idle_peer(skip=lambda s: s == 2) is None
    boards[1].publish(0)
    assert boards[0].idle_peer() == 1  # the first idle slot after this one
    assert boards[2].idle_peer() == 0 or boards[2].idle_peer() == 1
    boards[1].publish(0, serving=False)
    assert boards[0].idle_peer() == 2
    time.sleep(0.06)
    assert boards[0].idle_peer(stale_s=0.05) is None  # heartbeats too old
    with pytest.raises(ValueError, match="slot must be in 0..2"):
        OffloadBoard(tmp_path / BOARD_FILE, 3, 3)


def _pair(tmp_path):
    a, b = Offload(tmp_path, 2, 0, timeout_s=1.0), Offload(tmp_path, 2, 1, timeout_s=1.0)
    a.compute = lambda u, k, e, d, r, seen: (200, orjson.dumps({"by": "a", "user": u}))
    b.compute = lambda u, k, e, d, r, seen: (200, orjson.dumps({"by": "b", "user": u, "k": k, "explain": e, "deadline": d,
                                                                 "rid": r, "seen": list(seen)}))
    return a, b


def test_a_request_handed_over_is_computed_by_the_peer_and_the_connection_reused(tmp_path):
    async def run():
        a, b = _pair(tmp_path)
        await a.start()
        await b.start()
        try:
            assert a.should_send() is None  # nothing waits behind the request here
            a.arrive()
            a.arrive()
            assert a.should_send() == 1
            for i in range(3):
                seen = tuple(f"n{j}" for j in range(i))  # the sender's seen items travel with the request
                status, body = await a.send(1, (f"u{i}", 7, True, 120.0, f"rid{i}"), seen=seen)
                assert status == 200
                assert orjson.loads(body) == {"by": "b", "user": f"u{i}", "k": 7, "explain": True, "deadline": 120.0,
                                              "rid": f"rid{i}", "seen": list(seen)}
            assert (a.sent, b.received, a.failed) == (3, 3, 0)
            assert len(a._idle[1]) == 1  # one connection, reused
            assert b.held == 0
        finally:
            a.close()
            b.close()

    asyncio.run(run())


def test_a_dead_or_stopped_peer_costs_one_failed_attempt_then_is_left_alone(tmp_path):
    async def run():
        a, b = _pair(tmp_path)
        await a.start()
        await b.start()
        a.arrive()
        a.arrive()
        assert a.should_send() == 1
        b._server.close()  # listening stops, the board still says live (a stalled worker)
        await b._server.wait_closed()
        (tmp_path / "offload-w1.sock").unlink()
        assert await a.send(1, ("u1", 5, False, None, "r1")) is None
        assert a.failed == 1
        assert a.should_send() is None  # avoided for RETRY_AFTER_S
        b.close()  # a clean stop leaves the board
        a._avoid_until.clear()
        assert a.should_send() is None
        a.close()

    asyncio.run(run())


def test_a_peer_that_breaks_the_connection_mid_request_falls_back(tmp_path):
    async def run():
        a, b = _pair(tmp_path)
        await a.start()
        await b.start()
        b.compute = lambda *args: (_ for _ in ()).throw(ConnectionResetError("gone"))  # the peer fails mid-request
        assert await a.send(1, ("u1", 5, False, None, "r1")) is None
        assert a.failed == 1 and b.held == 0
        a.close()
        b.close()

    asyncio.run(run())


def _scope(user: str) -> dict:
    return {"type": "http", "method": "GET", "path": "/v1/feed", "query_string": f"user_id={user}&k=5".encode(),
            "headers": []}


async def _call(fast: FeedFastPath, user: str) -> tuple[int, bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    await fast(_scope(user), receive, send)
    return sent[0]["status"], sent[1]["body"]


async def _route(scope, receive, send):
    raise AssertionError("route called")


def test_fast_path_hands_over_only_requests_that_would_wait_and_only_to_an_idle_peer(tmp_path):
    async def run():
        a, b = Offload(tmp_path, 2, 0), Offload(tmp_path, 2, 1)
        computed: list[str] = []

        def feed_a(user_id, k, explain, deadline, rid):
            computed.append(user_id)
            return orjson.dumps({"by": "a"})

        fast = FeedFastPath(_route, feed_a, ServingMetrics(), max_k=50, default_k=20, valid_request_id=lambda r: True,
                            offload=a)
        b.compute = lambda u, k, e, d, r, seen: (200, orjson.dumps({"by": "b"}))
        await a.start()
        await b.start()
        try:
            one = await _call(fast, "solo")  # alone: computed here
            assert one == (200, b'{"by":"a"}') and a.sent == 0
            burst = await asyncio.gather(*[_call(fast, f"u{i}") for i in range(4)])  # read in one loop turn
            by = [orjson.loads(body)["by"] for _s, body in burst]
            assert all(s == 200 for s, _ in burst)
            # join the shortest queue: the first runs here; the second goes to the idle peer (0 there
            # < 1 ahead here); the third stays (1 on the way there, 1 ahead here); the fourth goes
            # (1 there < 2 ahead here)
            assert by == ["a", "b", "a", "b"] and a.sent == 2 and b.received == 2
            assert sorted(computed) == sorted(["solo"] + [f"u{i}" for i, w in enumerate(by) if w == "a"])
            assert a.held == 0 and b.held == 0
            b.close()  # the peer stops: everything is computed here, no error
            burst = await asyncio.gather(*[_call(fast, f"v{i}") for i in range(3)])
            assert [orjson.loads(body)["by"] for _s, body in burst] == ["a", "a", "a"]
        finally:
            a.close()
            b.close()

    asyncio.run(run())


def test_a_request_handed_over_by_a_peer_is_computed_with_the_feed_for_peers(tmp_path):
    """The peer's side of a hand-off uses ``feed_for_peer`` (serving/app.py: no impressions
    logged there), its own requests ``feed``."""
    async def run():
        a = Offload(tmp_path, 2, 0)
        calls: list[str] = []
        fast = FeedFastPath(_route, lambda u, k, e, d, r: (calls.append(f"own:{u}"), b"{}")[1], ServingMetrics(),
                            max_k=50, default_k=20, valid_request_id=lambda r: True, offload=a,
                            feed_for_peer=lambda u, k, e, d, r, seen: (calls.append(f"peer:{u}:{','.join(seen)}"), b"{}")[1])
        assert a.compute("p1", 5, False, None, "r1", ("n1", "n2")) == (200, b"{}")  # what a.start()'s server side calls
        assert await _call(fast, "o1") == (200, b"{}")
        assert calls == ["peer:p1:n1,n2", "own:o1"]
        a.close()

    asyncio.run(run())


def test_one_users_requests_are_answered_in_order_and_a_hand_off_carries_what_the_earlier_ones_showed(tmp_path):
    """Two requests of one user read together: the second waits, uncounted, until the first is
    answered and its feed recorded, so it is not handed to the idle peer with a seen list that
    lacks the first's items (both run here, in order); another user's request still joins the
    idle peer, carrying what this worker showed that user. A request cancelled while it waits
    does not let the user's next one overtake the earlier one."""
    async def run():
        a, b = Offload(tmp_path, 2, 0), Offload(tmp_path, 2, 1)
        shown: dict[str, list[str]] = {"u": [], "w": ["w-old"]}
        at_peer: list[tuple[str, tuple[str, ...]]] = []

        def feed_a(user_id, k, explain, deadline, rid):
            shown[user_id].append(rid)
            return orjson.dumps({"by": "a", "rid": rid})

        fast = FeedFastPath(_route, feed_a, ServingMetrics(), max_k=50, default_k=20, valid_request_id=lambda r: True,
                            offload=a, seen_of=lambda u: tuple(shown[u]),
                            log_handed_over=lambda u, rid, body, arrived: shown[u].append(f"peer:{rid}"))
        b.compute = lambda u, k, e, d, r, seen: (at_peer.append((u, seen)), (200, orjson.dumps({"by": "b"})))[1]
        await a.start()
        await b.start()
        try:
            async def call(user, rid):
                sent: list[dict] = []

                async def receive():
                    return {"type": "http.request", "body": b"", "more_body": False}

                async def send(msg):
                    sent.append(msg)

                scope = dict(_scope(user), headers=[(b"x-request-id", rid.encode())])
                await fast(scope, receive, send)
                return orjson.loads(sent[1]["body"])["by"]

            by = await asyncio.gather(call("u", "r1"), call("u", "r2"))
            assert by == ["a", "a"] and at_peer == [] and shown["u"] == ["r1", "r2"]  # in order, both here
            by = await asyncio.gather(call("u", "r3"), call("w", "r4"))  # another user: to the idle peer
            assert by == ["a", "b"] and at_peer == [("w", ("w-old",))]
            assert fast._user_tail == {}  # nothing left behind

            gate = asyncio.get_running_loop().create_future()  # the user's earlier request, still running
            fast._user_tail["x"] = gate
            waiting = asyncio.ensure_future(call("x", "r5"))
            await asyncio.sleep(0.01)
            waiting.cancel()  # e.g. shutdown: cancelled while it waits behind the earlier one
            await asyncio.gather(waiting, return_exceptions=True)
            later = asyncio.ensure_future(call("x", "r6"))
            await asyncio.sleep(0.01)
            assert not later.done() and "r6" not in shown.get("x", [])  # still behind the earlier request
            gate.set_result(None)
            shown["x"] = []
            assert await later == "a" and shown["x"] == ["r6"] and fast._user_tail == {}
        finally:
            a.close()
            b.close()

    asyncio.run(run())


def test_a_socket_path_that_cannot_be_bound_turns_hand_off_off_without_failing(tmp_path):
    deep = tmp_path / ("d" * 120)  # over the Unix socket path limit
    deep.mkdir()

    async def run():
        off = Offload(deep, 2, 0)
        await off.start()
        assert off.closed and off.should_send() is None
        off.arrive()
        off.arrive()
        assert off.should_send() is None

    asyncio.run(run())


def test_a_peer_error_or_an_expired_request_is_not_a_feed_and_nothing_is_computed_late(tmp_path):
    async def run():
        a, b = _pair(tmp_path)
        await a.start()
        await b.start()
        try:
            b.compute = lambda *args: (500, b'{"detail":"internal server error"}')
            assert await a.send(1, ("u1", 5, False, None, "r1")) is None  # the caller computes it instead
            assert a.failed == 1 and a.sent == 0
            a._avoid_until.clear()
            calls = []
            b.compute = lambda *args: calls.append(args) or (200, b"{}")
            # a frame read after its expiry (the sender gave up on it) is dropped: not computed, 504
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "offload-w1.sock"))
            payload = orjson.dumps(["u2", 5, False, None, "r2", time.monotonic_ns() - 1])
            writer.write(len(payload).to_bytes(4, "little") + payload)
            n = int.from_bytes(await reader.readexactly(4), "little")
            reply = await reader.readexactly(n)
            writer.close()
            assert int.from_bytes(reply[:2], "little") == 504 and calls == [] and b.expired == 1
            assert await a.send(1, ("u3", 5, False, None, "r3"), budget_s=1.0) == (200, b"{}")
            assert [c[0] for c in calls] == ["u3"]
        finally:
            a.close()
            b.close()

    asyncio.run(run())


def test_the_frame_reaches_the_peer_while_this_worker_computes_its_next_request(tmp_path):
    """The hand-off overlaps the two workers: the request is written to the peer (here a
    thread with its own event loop, as another process would be) before this worker's next
    local pipeline starts, so the peer computes it meanwhile; the handed-over feed is
    recorded here."""
    import threading

    order: list[str] = []
    peer_seen: list[tuple[str, ...]] = []
    b = Offload(tmp_path, 2, 1)
    b.compute = lambda u, k, e, d, r, seen: (order.append(f"b:{u}"), peer_seen.append(seen),
                                             (200, orjson.dumps({"by": "b", "request_id": r,
                                                                 "items": [{"item_id": "i9", "rank": 1}]})))[2]
    peer_loop = asyncio.new_event_loop()
    started = threading.Event()

    def peer():
        asyncio.set_event_loop(peer_loop)
        peer_loop.run_until_complete(b.start())
        started.set()
        peer_loop.run_forever()

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    assert started.wait(10)

    def feed_a(user_id, k, explain, deadline, rid):
        order.append(f"a:{user_id}:start")
        time.sleep(0.2)  # a slow local pipeline (the peer thread runs meanwhile)
        order.append(f"a:{user_id}:end")
        return orjson.dumps({"by": "a"})

    async def run():
        a = Offload(tmp_path, 2, 0)
        recorded = []
        fast = FeedFastPath(_route, feed_a, ServingMetrics(), max_k=50, default_k=20, valid_request_id=lambda r: True,
                            offload=a, deadline_ms=2000.0, log_handed_over=lambda u, r, body, arrived: recorded.append(u),
                            seen_of=lambda u: (f"shown-to-{u}",))
        await a.start()
        try:
            for burst in ("u", "v"):  # the second burst goes through the pooled connection
                got = await asyncio.gather(*[_call(fast, f"{burst}{i}") for i in range(2)])
                assert sorted(orjson.loads(body)["by"] for _s, body in got) == ["a", "b"]
            assert recorded == ["u1", "v1"]  # the second of each burst joins the peer's (empty) queue
            assert peer_seen == [("shown-to-u1",), ("shown-to-v1",)]  # this worker's seen items went along
            v = order[order.index("a:u0:end") + 1:]
            assert v.index("b:v1") < v.index("a:v0:end")  # computed by the peer during the local pipeline
        finally:
            a.close()

    async def stop_peer():
        b.close()
        await asyncio.sleep(0.05)  # the peer's connection handlers see the end of input
        peer_loop.stop()

    try:
        asyncio.run(run())
    finally:
        asyncio.run_coroutine_threadsafe(stop_peer(), peer_loop)
        thread.join(10)
        peer_loop.close()
