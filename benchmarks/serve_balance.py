"""How ``feedrank serve --workers N`` splits wrk's persistent connections, requests and
CPU between its worker processes (issue #5: one worker must not be the bottleneck).

    python benchmarks/serve_balance.py var/bench/serve/u1000000-i1000000-d5/model --rate 300 --seconds 15 --runs 3
    python benchmarks/serve_balance.py MODEL --runs 4 --set serving.balance_connections=false   # the kernel's split

Starts one server (in this process's session, so a priority wrapper around this script
covers it; a fresh events folder unless ``--events-dir``), waits until it is ready, warms
it up, then runs wrk ``--runs`` times with ``feedrank bench serve``'s Lua script (random
users, Poisson pacing, 32 persistent connections by default). wrk opens new connections
on each run, so every run is a fresh draw of the split. Per run and worker it reports:

* ``connections``: wrk's established connections the worker owns (``ss -tnp``, sampled at
  1/3 and 2/3 of the run, the later sample kept);
* ``requests``: feed responses the worker answered (its prometheus multiprocess file);
* ``cpu_s`` / ``busy``: the worker's CPU seconds over the run and that over the run's
  length (its utilisation of one core);

and for the run: wrk's achieved rps, p50 / p99, the server's CPU ms per request (all
processes), and ``loop_lag``: how many of the workers' 25 ms event-loop probe timers fired
more than 5 / 10 / 25 / 50 / 100 ms late (``feedrank_loop_lag_seconds``). With
``--profile-dir``, py-spy samples the GIL holder of each worker during the first run
(``--threads --gil``): each thread's share and what the background threads run.
``--json`` prints everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from feedrank.bench.serve import LUA, _parse_wrk, _tree_cpu_s, child_pids
from feedrank.serving.server import free_port

_SS_PID = re.compile(r"pid=(\d+)")


def _children(pid: int) -> list[int]:
    return child_pids(pid)


def _cpu_s(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError, ValueError):
        return 0.0


def connections_by_pid(port: int) -> dict[int, int]:
    """Established TCP connections on the server's ``port``, per owning process."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True,
                         check=True).stdout
    counts: dict[int, int] = {}
    for line in out.splitlines():
        pids = {int(p) for p in _SS_PID.findall(line)}
        for p in pids:  # a socket shared by several processes is counted for each (the listen socket is not listed)
            counts[p] = counts.get(p, 0) + 1
    return counts


def feed_responses_by_pid(metrics_dir: Path) -> dict[int, float]:
    """``/v1/feed`` responses per worker pid, from prometheus_client's multiprocess files."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: dict[int, float] = {}
    for f in metrics_dir.glob("counter_*.db"):
        try:
            pid = int(f.stem.split("_")[-1])
        except ValueError:
            continue
        for key, value, *_rest in MmapedDict.read_all_values_from_file(str(f)):
            _metric, name, labels, _help = json.loads(key)
            if name.startswith("feedrank_http_responses") and labels.get("endpoint") == "/v1/feed":
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def loop_lag_buckets(metrics_dir: Path) -> dict[float, float]:
    """``feedrank_loop_lag_seconds`` cumulative bucket counts (upper bound -> probe firings
    at most that late), summed over the workers."""
    from prometheus_client.mmap_dict import MmapedDict

    buckets: dict[float, float] = {}
    for f in metrics_dir.glob("histogram_*.db"):
        for key, value, *_rest in MmapedDict.read_all_values_from_file(str(f)):
            _metric, name, labels, _help = json.loads(key)
            if name == "feedrank_loop_lag_seconds_bucket":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value  # the files hold per-bucket counts
    cumulative, run = {}, 0.0
    for le, value in sorted(buckets.items()):
        run += value
        cumulative[le] = run
    return cumulative


def _lag_shares(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Probe firings in the run and the share later than 5 / 10 / 25 / 50 / 100 ms."""
    d = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = d.get(float("inf"), 0.0)
    out: dict[str, Any] = {"probes": int(total)}
    for ms in (5, 10, 25, 50, 100):
        le = ms / 1000.0
        if total and le in d:
            out[f"late_gt_{ms}ms"] = round(1.0 - d[le] / total, 4)
    return out


def _py_spy(pid: int, seconds: int, out: Path) -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or ("/opt/prof/bin/py-spy" if Path("/opt/prof/bin/py-spy").exists() else None)
    if exe is None:
        print("py-spy not found: no profile", file=sys.stderr)
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--threads", "--gil", "--nonblocking", "-r", "250",
                             "-d", str(seconds), "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def summarize_raw(path: Path, top: int = 12) -> dict[str, Any]:
    """GIL-holding samples of a ``py-spy record --threads --gil -f raw`` profile: the share
    of each thread, and the functions the non-main threads spend their samples in."""
    threads: dict[str, int] = {}
    frames: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        parts = stack.split(";")
        thread = re.sub(r"\s*\(?0x[0-9a-f]+\)?", "", parts[0]).strip()
        threads[thread] = threads.get(thread, 0) + count
        total += count
        if "MainThread" not in thread:
            # the deepest feedrank frame names what the thread was doing
            ours = [p for p in parts[1:] if "feedrank" in p] or parts[-1:]
            key = f"{thread}: {ours[-1]}"
            frames[key] = frames.get(key, 0) + count
    return {"samples": total,
            "threads": {t: round(c / max(total, 1), 4) for t, c in sorted(threads.items(), key=lambda kv: -kv[1])},
            "background_top": {k: round(c / max(total, 1), 4)
                               for k, c in sorted(frames.items(), key=lambda kv: -kv[1])[:top]}}


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} was not ready after {timeout_s:.0f} s")


def _wrk(url: str, rate: float, seconds: int, connections: int, users: int, k: int, seed: int) -> subprocess.Popen:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(LUA % {"seed": seed, "users": users, "gap_ms": 1000.0 / rate, "k": k})
    proc = subprocess.Popen(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script),
                             url + "/v1/feed"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.script = script  # type: ignore[attr-defined]
    return proc


def measure_run(url: str, port: int, server_pid: int, metrics_dir: Path, rate: float, seconds: int, connections: int,
                users: int, k: int, seed: int, profile_dir: Path | None = None) -> dict[str, Any]:
    workers = _children(server_pid)
    lag0 = loop_lag_buckets(metrics_dir)
    cpu0 = {p: _cpu_s(p) for p in workers}
    tree0 = _tree_cpu_s(server_pid)
    req0 = feed_responses_by_pid(metrics_dir)
    t0 = time.monotonic()
    wrk = _wrk(url, rate, seconds, connections, users, k, seed)
    spies = {}
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        for p in workers:
            spy = _py_spy(p, max(1, seconds - 2), profile_dir / f"worker_{p}.raw")
            if spy is not None:
                spies[p] = spy
    conns: dict[int, int] = {}
    for frac in (1 / 3, 2 / 3):
        time.sleep(max(0.0, t0 + seconds * frac - time.monotonic()))
        conns = connections_by_pid(port)
    out, _ = wrk.communicate(timeout=seconds + 60)
    wall = time.monotonic() - t0
    wrk.script.unlink(missing_ok=True)  # type: ignore[attr-defined]
    tree1 = _tree_cpu_s(server_pid)
    req1 = feed_responses_by_pid(metrics_dir)
    res = _parse_wrk(out)
    res["loop_lag"] = _lag_shares(lag0, loop_lag_buckets(metrics_dir))
    for p, spy in spies.items():
        spy.wait(timeout=60)
        raw = profile_dir / f"worker_{p}.raw"  # type: ignore[operator]
        if raw.exists():
            res.setdefault("gil_profile", {})[str(p)] = summarize_raw(raw)
    per_worker = []
    for p in workers:
        cpu = _cpu_s(p) - cpu0[p]
        per_worker.append({"pid": p, "connections": conns.get(p, 0), "requests": int(req1.get(p, 0) - req0.get(p, 0)),
                           "cpu_s": round(cpu, 2), "busy": round(cpu / wall, 3)})
    res["helpers"] = [w for w in per_worker if not (w["requests"] or w["connections"])]  # e.g. the node consumer
    res["workers"] = [w for w in per_worker if w["requests"] or w["connections"]]
    res["server_cpu_ms_per_request"] = round(1000.0 * (tree1 - tree0) / max(res.get("requests") or 1, 1), 3)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=300.0, help="offered requests per second (default 300)")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--users", type=int, default=1_000_000, help="user ids u0..u<users-1> (the world's size)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--events-dir", type=Path, default=None, help="default: a fresh temporary folder, removed at the end")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--profile-dir", type=Path, default=None,
                    help="py-spy (--threads --gil) each worker during the first run; raw profiles and a summary")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not (args.model / "manifest.json").exists():
        ap.error(f"{args.model} is not a model bundle (no manifest.json)")
    if shutil.which("wrk") is None:
        ap.error("wrk not found (make wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="serve-balance-"))
    events = args.events_dir or tmp / "events"
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = str(Path(sys.executable).parent / "feedrank")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    # same session and autogroup as this script: a priority wrapper around it covers the server
    server = subprocess.Popen([exe, "serve", "--model", str(args.model), "--port", str(port), "--log-level", "warning",
                               "--events-dir", str(events), "--workers", str(args.workers), *args.settings],
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "wb"), env=env, process_group=0)
    results: list[dict[str, Any]] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server (its own process group) too
    try:
        t0 = time.monotonic()
        _wait_ready(url, server, 1800.0)
        print(f"server ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        _wrk(url, 50, 3, 4, args.users, args.k, seed=1).communicate()
        for i in range(args.runs):
            time.sleep(2.0)  # the previous run's connections close first: each run starts from an idle server
            res = measure_run(url, port, server.pid, metrics_dir, args.rate, args.seconds, args.connections, args.users,
                              args.k, seed=10 + i, profile_dir=args.profile_dir if i == 0 else None)
            results.append(res)
            split = " / ".join(f"{w['connections']}c {w['requests']}r {w['busy']:.0%}" for w in res["workers"])
            helpers = " / ".join(f"{h['busy']:.0%}" for h in res["helpers"]) or "-"
            print(f"run {i + 1}: achieved {res['achieved_rps']} rps, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
                  f"{res['server_cpu_ms_per_request']} ms CPU/request; workers {split}; "
                  f"other processes {helpers}; "
                  f"loop lag {res['loop_lag']}",
                  file=sys.stderr)
    except BaseException:
        print((tmp / "server.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        try:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"rate": args.rate, "seconds": args.seconds, "connections": args.connections,
                          "settings": args.settings, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
