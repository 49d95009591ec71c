import threading
import time

import pytest

from feedrank.pipeline.batching import MicroBatcher
from feedrank.pipeline.degrade import TierController


def test_batcher_returns_each_caller_its_own_result_and_coalesces():
    sizes = []

    def fn(xs):
        sizes.append(len(xs))
        return [x * 10 for x in xs]

    b = MicroBatcher(fn, max_wait_ms=300.0, max_batch=16)  # a wide wait: slow thread starts still coalesce
    results = {}
    barrier = threading.Barrier(16)

    def call(i):
        barrier.wait()
        results[i] = b.submit(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == {i: i * 10 for i in range(16)}
    assert sum(sizes) == 16 and len(sizes) < 16  # fewer calls of fn than callers
    assert b.calls == 16 and b.batches == len(sizes)


def test_batcher_alone_and_max_batch_and_errors():
    b = MicroBatcher(lambda xs: [x + 1 for x in xs], max_wait_ms=1.0, max_batch=2)
    assert b.submit(1) == 2
    out = []
    ts = [threading.Thread(target=lambda i=i: out.append(b.submit(i))) for i in range(7)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(5)
    assert sorted(out) == [1, 2, 3, 4, 5, 6, 7]

    def boom(xs):
        raise ValueError("ranker down")

    bad = MicroBatcher(boom, max_wait_ms=1.0)
    with pytest.raises(ValueError, match="ranker down"):
        bad.submit(1)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_controller_steps_down_under_overload_and_up_after_cooldown():
    clock = Clock()
    c = TierController(slo_ms=25.0, window=100, min_samples=20, recover_ratio=0.5, cooldown_s=5.0, clock=clock)
    for _ in range(30):
        assert c.record(5.0) == "full"
    c.record(60.0)  # overload: p99 of the window is now over the SLO -> one step down
    assert c.tier == "reduced"
    for _ in range(19):  # the window restarted: too few samples to judge the new level yet
        c.record(60.0)
    assert c.tier == "reduced"
    c.record(60.0)  # still over with the reduced tier: next step
    assert c.tier == "fallback"
    # calm, but not for long enough: stays down (hysteresis)
    for _ in range(30):
        clock.t += 0.1
        c.record(3.0)
    assert c.tier == "fallback"
    clock.t += 6.0
    c.record(3.0)
    assert c.tier == "reduced"
    for _ in range(30):
        c.record(3.0)
    clock.t += 6.0
    c.record(3.0)
    assert c.tier == "full"
    assert [t[1:] for t in c.transitions] == [("full", "reduced"), ("reduced", "fallback"), ("fallback", "reduced"),
                                             ("reduced", "full")]


def test_controller_holds_between_thresholds():
    clock = Clock()
    c = TierController(slo_ms=25.0, min_samples=10, recover_ratio=0.5, cooldown_s=1.0, clock=clock)
    for _ in range(10):  # the 10th sample fills the window: one step down, window restarts
        c.record(60.0)
    assert c.tier == "reduced"
    for _ in range(200):  # between 0.5 x SLO and the SLO: neither step
        clock.t += 0.1
        c.record(18.0)
    assert c.tier == "reduced"
    time.sleep(0)  # the controller never reads the real clock
