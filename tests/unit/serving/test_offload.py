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
    a.compute = lambda u, k, e, d, r: (200, orjson.dumps({"by": "a", "user": u}))
    b.compute = lambda u, k, e, d, r: (200, orjson.dumps({"by": "b", "user": u, "k": k, "explain": e, "deadline": d, "rid": r}))
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
                status, body = await a.send(1, (f"u{i}", 7, True, 120.0, f"rid{i}"))
                assert status == 200
                assert orjson.loads(body) == {"by": "b", "user": f"u{i}", "k": 7, "explain": True, "deadline": 120.0,
                                              "rid": f"rid{i}"}
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
        b.compute = lambda u, k, e, d, r: (200, orjson.dumps({"by": "b"}))
        await a.start()
        await b.start()
        try:
            one = await _call(fast, "solo")  # alone: computed here
            assert one == (200, b'{"by":"a"}') and a.sent == 0
            burst = await asyncio.gather(*[_call(fast, f"u{i}") for i in range(4)])  # read in one loop turn
            by = [orjson.loads(body)["by"] for _s, body in burst]
            assert all(s == 200 for s, _ in burst)
            assert by.count("b") == 1 and a.sent == 1 and b.received == 1  # one to the idle peer, no more on the way
            assert sorted(computed) == sorted(["solo"] + [f"u{i}" for i, w in enumerate(by) if w == "a"])
            assert a.held == 0 and b.held == 0
            b.close()  # the peer stops: everything is computed here, no error
            burst = await asyncio.gather(*[_call(fast, f"v{i}") for i in range(3)])
            assert [orjson.loads(body)["by"] for _s, body in burst] == ["a", "a", "a"]
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
