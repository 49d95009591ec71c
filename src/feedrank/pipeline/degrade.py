"""The degradation ladder's controller: hold the latency SLO under overload.

Levels: 0 ``full`` (full ranker, all candidates) -> 1 ``reduced`` (small ranker, fewer
candidates) -> 2 ``fallback`` (cached popular and fresh lists, no model).

The controller keeps the last ``window`` request latencies. It steps **down** one level
when their p99 exceeds the SLO, and steps back **up** only when p99 has stayed under
``recover_ratio`` x SLO for ``cooldown_s``. The gap between the two thresholds and the
cooldown are the hysteresis that stops it flapping. After each step the window restarts,
so the next decision sees only the new level's latencies. Time comes from an injected
clock, so tests can drive it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

LEVELS = ("full", "reduced", "fallback")


class TierController:
    def __init__(self, slo_ms: float, window: int = 200, min_samples: int = 50, recover_ratio: float = 0.5,
                 cooldown_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.slo_ms = slo_ms
        self.window = window
        self.min_samples = min_samples
        self.recover_ratio = recover_ratio
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.level = 0
        self._lat: deque[float] = deque(maxlen=window)
        self._calm_since: float | None = None
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
        """Add one request's latency; returns the tier to use for the next requests."""
        with self._lock:
            self._lat.append(float(latency_ms))
            if len(self._lat) < self.min_samples:
                return LEVELS[self.level]
            p99 = float(np.percentile(np.fromiter(self._lat, dtype=np.float64), 99))
            now = self.clock()
            if p99 > self.slo_ms and self.level < len(LEVELS) - 1:
                self._move(self.level + 1, now)
            elif p99 < self.recover_ratio * self.slo_ms and self.level > 0:
                if self._calm_since is None:
                    self._calm_since = now
                elif now - self._calm_since >= self.cooldown_s:
                    self._move(self.level - 1, now)
            else:
                self._calm_since = None
            return LEVELS[self.level]

    def _move(self, level: int, now: float) -> None:
        self.transitions.append((now, LEVELS[self.level], LEVELS[level]))
        self.level = level
        self._lat.clear()
        self._calm_since = None
