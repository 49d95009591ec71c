"""Two workers as two separate queues vs with per-request hand-off, simulated (issue #5).

    python benchmarks/queue_sim.py                       # 300 rps, mean CPU 4-6 ms per request
    python benchmarks/queue_sim.py --rate 300 --means 4,5 --hand-off-cost-ms 0.3 --seconds 400

Poisson arrivals at ``--rate``; each request belongs to one of two workers at random (a
keep-alive connection stays on the worker that accepted it); service times are lognormal
(sigma 0.25: p50 ~0.97x, p99 ~1.7x the mean, the shape of the 1M-item server's in-process
``recommend()`` times, benchmarks/README.md). "separate": each worker serves its own
requests in order (two M/G/1 queues). "hand-off": a request whose worker would start it
more than 2 ms later than the other worker goes to the other one, at
``--hand-off-cost-ms`` extra CPU (serving/offload.py, idealised: the decision sees both
queues exactly). Prints p50/p99 of the response time in ms. No timing of this machine is
involved: a model, to tell what the hand-off can buy at a given CPU per request.
"""

from __future__ import annotations

import argparse

import numpy as np


def simulate(rate: float, mean_s: float, seconds: float, hand_off: bool, cost_s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    arrive = np.cumsum(rng.exponential(1.0 / rate, n))
    service = rng.lognormal(0.0, 0.25, n)
    service *= mean_s / service.mean()
    home = rng.integers(0, 2, n)
    free = [0.0, 0.0]
    latency = np.empty(n)
    for i in range(n):
        j = int(home[i])
        o = 1 - j
        if hand_off and free[o] < free[j] - 0.002:
            start = max(arrive[i], free[o])
            free[o] = start + service[i] + cost_s
            free[j] += cost_s / 2  # the sender's share of the hand-off
            latency[i] = free[o] - arrive[i]
        else:
            start = max(arrive[i], free[j])
            free[j] = start + service[i]
            latency[i] = free[j] - arrive[i]
    return latency * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--means", default="4,5,5.5,6", help="mean CPU ms per request, comma-separated")
    ap.add_argument("--seconds", type=float, default=200.0)
    ap.add_argument("--hand-off-cost-ms", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"{'mean ms':>8} {'separate p50':>13} {'p99':>7} {'hand-off p50':>13} {'p99':>7}")
    for m in (float(x) for x in a.means.split(",")):
        sep = simulate(a.rate, m / 1000.0, a.seconds, False, 0.0, a.seed)
        off = simulate(a.rate, m / 1000.0, a.seconds, True, a.hand_off_cost_ms / 1000.0, a.seed)
        print(f"{m:8.1f} {np.percentile(sep, 50):13.1f} {np.percentile(sep, 99):7.1f} "
              f"{np.percentile(off, 50):13.1f} {np.percentile(off, 99):7.1f}")


if __name__ == "__main__":
    main()
