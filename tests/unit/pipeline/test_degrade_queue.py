"""The ladder sees queueing: event-loop lag (``QueueDelay``) added to the service time steps
the controller down with hysteresis, with fake clocks only (no timing)."""

from __future__ import annotations

import asyncio

import pytest

from feedrank.pipeline.degrade import QueueDelay, TierController


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(clock: Clock, **kw) -> tuple[TierController, QueueDelay]:
    q = QueueDelay(window_s=1.0, clock=clock)
    kw = {"slo_ms": 25.0, "window": 50, "min_samples": 10, "recover_ratio": 0.5, "cooldown_s": 5.0, **kw}
    return TierController(clock=clock, queue=q, min_dwell_s=1.0, **kw), q


def test_queue_delay_is_a_high_quantile_of_the_window_and_forgets_old_samples():
    clock = Clock()
    q = QueueDelay(window_s=1.0, clock=clock)
    assert q.recent_ms() == 0.0
    q.observe(40.0)
    clock.t += 0.5
    q.observe(-3.0)  # an early wake-up is no delay
    q.observe(10.0)
    assert q.recent_ms() == 40.0
    clock.t += 0.6  # the 40 ms sample is older than the window now
    assert q.recent_ms() == 10.0
    q.clear()
    assert q.recent_ms() == 0.0
    for _ in range(9):
        q.observe(2.0)
    q.observe(500.0)  # one hiccup in ten samples: not queueing
    assert q.recent_ms() == 2.0
    for _ in range(5):
        q.observe(80.0)  # the loop stays behind: it is
    assert q.recent_ms() == 80.0
    with pytest.raises(ValueError, match="window"):
        QueueDelay(window_s=0.0)
    with pytest.raises(ValueError, match="quantile"):
        QueueDelay(quantile=0.0)


def test_fast_service_but_long_queue_steps_down():
    """Pipeline time well under the SLO; the loop lag makes requests wait: step down."""
    clock = Clock()
    c, q = make(clock)
    for _ in range(20):
        c.record(5.0)
    assert c.tier == "full"
    q.observe(30.0)  # 5 ms p99 + 30 ms in the queue > 25 ms
    assert c.record(5.0) == "reduced"
    assert [t[1:] for t in c.transitions] == [("full", "reduced")]


def test_queue_alone_steps_down_without_requests_and_respects_the_dwell():
    clock = Clock()
    c, q = make(clock)
    q.observe(200.0)  # the loop is 200 ms behind; no request finished yet
    assert c.tick() == "reduced"
    q.observe(200.0)  # still behind right after the step: the new level gets min_dwell_s to drain
    assert c.tick() == "reduced"
    clock.t += 0.5
    q.observe(200.0)
    assert c.tick() == "reduced"
    clock.t += 0.6
    q.observe(200.0)
    assert c.tick() == "fallback"


def test_lag_under_the_slo_alone_needs_latency_samples():
    clock = Clock()
    c, q = make(clock)
    q.observe(20.0)  # under the SLO on its own, and no service time known yet: hold
    assert c.tick() == "full"
    for _ in range(10):
        c.record(8.0)  # 8 + 20 > 25 once the window is full
    assert c.tier == "reduced"


def test_recovers_only_after_a_calm_cooldown_of_both_signals():
    clock = Clock()
    c, q = make(clock)
    q.observe(100.0)
    c.tick()
    assert c.tier == "reduced"
    for _ in range(10):
        clock.t += 0.1
        c.record(3.0)
    q.observe(15.0)  # 3 + 15 = 18 ms: between 0.5 x SLO and the SLO, no recovery clock
    for _ in range(100):  # 10 s of it: far longer than the cooldown
        clock.t += 0.1
        q.observe(15.0)
        c.record(3.0)
    assert c.tier == "reduced"
    clock.t += 2.0  # the lag samples age out: 3 ms < 12.5 ms, calm from now on
    c.record(3.0)
    clock.t += 4.0
    c.record(3.0)
    assert c.tier == "reduced"  # calm for 4 s < cooldown
    clock.t += 1.5
    c.record(3.0)
    assert c.tier == "full"
    assert [t[1:] for t in c.transitions] == [("full", "reduced"), ("reduced", "full")]


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="slo_ms"):
        TierController(slo_ms=0.0)
    with pytest.raises(ValueError, match="recover_ratio"):
        TierController(slo_ms=10.0, recover_ratio=1.5)


def test_loop_probe_records_a_blocked_loop_and_ticks_the_controllers():
    from feedrank.serving.app import probe_loop_lag

    class Spy:
        ticks = 0

        def tick(self) -> str:
            Spy.ticks += 1
            return "full"

    lag = QueueDelay(window_s=60.0, quantile=1.0)  # the largest sample: the blocked wake-up

    async def main() -> None:
        task = asyncio.create_task(probe_loop_lag(lambda: [Spy()], interval_s=0.001, lag=lag))
        await asyncio.sleep(0.01)
        import time

        time.sleep(0.2)  # a request's pipeline holding the loop for 200 ms
        await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(main())
    assert lag.recent_ms() >= 150.0  # the probe woke at least that late
    assert Spy.ticks >= 2


def test_probe_finds_the_controllers_behind_an_experiment_router():
    """With experiments on, the served object is a router: the probe must still reach the
    routed model's ladder and those of pinned versions (each once)."""
    from types import SimpleNamespace

    from feedrank.serving.app import _controllers

    c_base, c_pinned = object(), object()
    model = SimpleNamespace(controller=c_base)
    view = SimpleNamespace(controller=c_base)  # a settings view shares its model's controller
    manager = SimpleNamespace(active=model)
    router = SimpleNamespace(base=manager, pinned_models=lambda: [SimpleNamespace(controller=c_pinned), view])
    assert _controllers(router) == [c_base, c_pinned]
    assert _controllers(manager) == [c_base]
    assert _controllers(model) == [c_base]
    assert _controllers(SimpleNamespace(active=SimpleNamespace(controller=None))) == []


def test_a_move_forgets_the_queue_delay_for_that_controller_only():
    """Two controllers reading one queue (the process's LOOP_LAG: during a hot swap, or one
    per settings view): one stepping down must not erase the delay the other still sees."""
    clock = Clock()
    q = QueueDelay(window_s=1.0, clock=clock)
    kw = {"slo_ms": 25.0, "window": 50, "min_samples": 10, "recover_ratio": 0.5, "cooldown_s": 5.0}
    a = TierController(clock=clock, queue=q, min_dwell_s=1.0, **kw)
    b = TierController(clock=clock, queue=q, min_dwell_s=1.0, **kw)
    for _ in range(5):
        q.observe(80.0)
    assert a.tick() == "reduced"  # the queue alone steps it down
    assert q.recent_ms() == 80.0  # still there for b
    assert b.tick() == "reduced"
    clock.t += 0.1
    assert a.tick() == "reduced" and a.queue.recent_ms(since=a._queue_from) == 0.0  # a forgot it
    clock.t += 1.0  # a's dwell passed; new delays count for a again
    for _ in range(5):
        q.observe(90.0)
    assert a.tick() == "fallback"
