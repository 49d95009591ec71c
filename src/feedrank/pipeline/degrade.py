"""The degradation ladder's controller: hold the latency SLO under overload.

Levels: 0 ``full`` (full ranker, all candidates) -> 1 ``reduced`` (small ranker, fewer
candidates) -> 2 ``fallback`` (cached popular and fresh lists, no model).

Two signals, because a request's latency is the time it waited plus the time it ran:

* **service time**: the last ``window`` request latencies measured inside the pipeline
  (``record``);
* **queue delay**: how late the serving event loop runs what it was asked to run, from a
  ``QueueDelay`` fed by a periodic probe on the loop (``serving/app.py`` starts one per
  worker: a timer that should fire every ``probe_s`` and measures how late it fired). When
  the loop is busy with queued requests, every request that arrives meanwhile waits about
  that long in the socket before its pipeline starts, and the pipeline's own timer never
  sees it.

The controller steps **down** one level when ``p99(service time) + queue delay`` exceeds
the SLO (the queue delay alone may trigger it, through ``tick``: a loop that is falling
behind may never finish enough requests to fill the latency window), and steps back
**up** only when that sum has stayed under ``recover_ratio`` x SLO for ``cooldown_s``.
The gap between the two thresholds, the cooldown and a minimum dwell of ``min_dwell_s``
before a step down on the queue delay alone (the new level needs a moment to drain the
queue) are the hysteresis that stops it flapping (a step on latency needs ``min_samples`` requests of the
new level first, which is its own dwell). After each step the latency window and the queue
samples restart, so the next decision sees only the new level. Time comes from injected
clocks, so tests can drive it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

LEVELS = ("full", "reduced", "fallback")


class QueueDelay:
    """Recent event-loop lag samples (ms) of one process, kept for ``window_s`` seconds.

    ``observe(ms)`` adds a sample (negative values count as 0); ``recent_ms()`` is the
    ``quantile`` (nearest rank, 0.9 by default) of the window's samples, so one hiccup
    (the process descheduled for a moment on a busy machine) does not count as queueing
    but a loop that stays behind does; 0.0 when there is none (an idle or unprobed process
    adds no delay); ``clear()`` forgets them."""

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic, quantile: float = 0.9) -> None:
        if not window_s > 0:
            raise ValueError(f"queue delay window must be > 0 seconds, got {window_s}")
        if not 0 < quantile <= 1:
            raise ValueError(f"queue delay quantile must be in (0, 1], got {quantile}")
        self.window_s = float(window_s)
        self.quantile = float(quantile)
        self.clock = clock
        self._samples: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def observe(self, delay_ms: float) -> None:
        now = self.clock()
        with self._lock:
            self._samples.append((now, max(0.0, float(delay_ms))))
            self._trim(now)

    def recent_ms(self, since: float | None = None) -> float:
        """The quantile of the delays observed in the window (and after ``since``, a
        time of this object's clock, when given); 0 when there are none."""
        now = self.clock()
        with self._lock:
            self._trim(now)
            ms = sorted(x for t, x in self._samples if since is None or t > since)
        if not ms:
            return 0.0
        return ms[max(0, math.ceil(self.quantile * len(ms)) - 1)]

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()

    def _trim(self, now: float) -> None:
        s = self._samples
        while s and now - s[0][0] > self.window_s:
            s.popleft()


# the serving process's event-loop lag: written by the app's probe (serving/app.py), read by
# every TierController of the process that is not given its own
LOOP_LAG = QueueDelay()


class TierController:
    def __init__(self, slo_ms: float, window: int = 200, min_samples: int = 50, recover_ratio: float = 0.5,
                 cooldown_s: float = 5.0, clock: Callable[[], float] = time.monotonic, *,
                 queue: QueueDelay | None = None, min_dwell_s: float = 1.0) -> None:
        if not slo_ms > 0:
            raise ValueError(f"slo_ms must be > 0, got {slo_ms}")
        if not 0 < recover_ratio < 1:
            raise ValueError(f"recover_ratio must be in (0, 1), got {recover_ratio}")
        self.slo_ms = slo_ms
        self.window = window
        self.min_samples = min_samples
        self.recover_ratio = recover_ratio
        self.cooldown_s = cooldown_s
        self.min_dwell_s = float(min_dwell_s)
        self.clock = clock
        self.queue = queue if queue is not None else LOOP_LAG
        self.level = 0
        self._lat: deque[float] = deque(maxlen=window)
        self._calm_since: float | None = None
        self._moved_at = -np.inf
        self._queue_from: float | None = None  # queue delays before this (the queue's clock) predate the last move
        self._lock = threading.Lock()
        self.transitions: list[tuple[float, str, str]] = []

    @property
    def tier(self) -> str:
        return LEVELS[self.level]

    def p99(self) -> float | None:
        with self._lock:
            if len(self._lat) < self.min_samples:
                return None
            return float(np.percentile(np.fromiter(self._lat, dtype=np.float64), 99))

    def record(self, latency_ms: float) -> str:
        """Add one request's latency (service time); returns the tier to use for the next requests."""
        with self._lock:
            self._lat.append(float(latency_ms))
            return self._decide()

    def tick(self) -> str:
        """Re-decide on the queue delay without a new latency (the loop probe calls this)."""
        with self._lock:
            return self._decide()

    def _decide(self) -> str:
        queued = self.queue.recent_ms(since=self._queue_from)
        now = self.clock()
        enough = len(self._lat) >= self.min_samples
        service = float(np.percentile(np.fromiter(self._lat, dtype=np.float64), 99)) if enough else 0.0
        signal = service + queued
        if signal > self.slo_ms and self.level < len(LEVELS) - 1:
            # a latency step needs a full window of the current level's requests; the queue
            # delay alone is enough (requests pile up), at most once per min_dwell_s
            if enough or (queued > self.slo_ms and now - self._moved_at >= self.min_dwell_s):
                self._move(self.level + 1, now)
            self._calm_since = None
        elif enough and signal < self.recover_ratio * self.slo_ms and self.level > 0:
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self.cooldown_s:
                self._move(self.level - 1, now)
        elif enough or queued > 0:
            self._calm_since = None
        return LEVELS[self.level]

    def _move(self, level: int, now: float) -> None:
        self.transitions.append((now, LEVELS[self.level], LEVELS[level]))
        self.level = level
        self._lat.clear()
        # the delays before the move do not count for this controller any more; the queue is
        # shared by the process's controllers (LOOP_LAG), so it is not cleared for the others
        self._queue_from = self.queue.clock()
        self._calm_since = None
        self._moved_at = now
