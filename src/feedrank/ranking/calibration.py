"""Calibration of ranker logits into click probabilities, fit on a held-out split.

    cal = fit_calibrator("isotonic", logits, labels)      # (N,) float, (N,) {0,1}
    p = cal.apply(logits)                                 # (N,) float64 in [0, 1]
    Calibrator.from_dict(cal.to_dict())                   # JSON round trip (no pickle)

* ``platt``: ``p = sigmoid(a * logit + b)``, (a, b) by Newton's method on the log loss;
* ``isotonic``: a non-decreasing step function of the logit (pool-adjacent-violators),
  interpolated linearly between block centres, ties broken by the logit: keeps the ranking;
* ``none``: ``sigmoid(logit)``.

Pure numpy. The ranker is trained with a position term, so the served logit is the click
logit at position 0; a calibrator fit on logged impressions maps it to the click rate at
the logged positions, which is what ECE on logged test impressions measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS = ("none", "platt", "isotonic")
TIE_BREAK = 1e-6


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0)))


@dataclass
class Calibrator:
    kind: str = "none"
    a: float = 1.0
    b: float = 0.0
    xs: list[float] = field(default_factory=list)   # isotonic block centres (logits), increasing
    ys: list[float] = field(default_factory=list)   # isotonic probabilities, non-decreasing

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """(N,) logits -> (N,) float64 probabilities."""
        z = np.asarray(logits, dtype=np.float64)
        if self.kind == "platt":
            return _sigmoid(self.a * z + self.b)
        if self.kind == "isotonic" and self.xs:
            # a step function ties many logits; a 1e-6 * sigmoid term breaks the ties by the
            # logit, so calibration never changes the ranking (and moves ECE by < 1e-6)
            return np.clip(np.interp(z, self.xs, self.ys) + TIE_BREAK * _sigmoid(z), 0.0, 1.0)
        return _sigmoid(z)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "a": self.a, "b": self.b, "xs": list(self.xs), "ys": list(self.ys)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Calibrator:
        if not d:
            return cls()
        return cls(str(d.get("kind", "none")), float(d.get("a", 1.0)), float(d.get("b", 0.0)),
                   [float(v) for v in d.get("xs", [])], [float(v) for v in d.get("ys", [])])


def fit_platt(logits: np.ndarray, labels: np.ndarray, iters: int = 50) -> Calibrator:
    """Newton's method on the mean log loss of ``sigmoid(a z + b)`` (tiny ridge for stability)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    w = np.array([1.0, 0.0])
    X = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(iters):
        p = _sigmoid(X @ w)
        grad = X.T @ (p - y) / len(y) + 1e-6 * w
        h = (X * (p * (1 - p))[:, None]).T @ X / len(y) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return Calibrator("platt", float(w[0]), float(w[1]))


def fit_isotonic(logits: np.ndarray, labels: np.ndarray, max_points: int = 512) -> Calibrator:
    """Pool-adjacent-violators on labels sorted by logit; at most ``max_points`` knots."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    order = np.argsort(z, kind="stable")
    z, y = z[order], y[order]
    # blocks: (sum y, count, sum z); merge while the previous mean exceeds the next
    sy: list[float] = []
    cnt: list[float] = []
    sz: list[float] = []
    for zi, yi in zip(z.tolist(), y.tolist()):
        sy.append(yi)
        cnt.append(1.0)
        sz.append(zi)
        while len(sy) > 1 and sy[-2] * cnt[-1] >= sy[-1] * cnt[-2]:
            s, c, t = sy.pop(), cnt.pop(), sz.pop()
            sy[-1] += s
            cnt[-1] += c
            sz[-1] += t
    xs = np.asarray(sz) / np.asarray(cnt)
    ys = np.asarray(sy) / np.asarray(cnt)
    if len(xs) > max_points:  # thin the knots (monotone either way)
        keep = np.unique(np.linspace(0, len(xs) - 1, max_points).round().astype(np.int64))
        xs, ys = xs[keep], ys[keep]
    return Calibrator("isotonic", xs=xs.tolist(), ys=ys.tolist())


def fit_calibrator(kind: str, logits: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Fit ``kind`` (``KINDS``) on held-out (N,) logits and {0,1} labels."""
    if kind == "platt":
        return fit_platt(logits, labels)
    if kind == "isotonic":
        return fit_isotonic(logits, labels)
    if kind == "none":
        return Calibrator()
    raise ValueError(f"unknown calibration {kind!r} (one of {', '.join(KINDS)})")
