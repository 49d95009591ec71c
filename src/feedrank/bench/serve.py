"""Load benchmark: the feed server under wrk at fixed offered rates, against a bare ASGI
endpoint in the same run.

    feedrank bench serve --users 1000000 --items 1000000 --rates 100,200,300 --seconds 15

1. Builds (or reuses) a synthetic world and a model of the given size under ``--workdir``.
2. Starts ``feedrank serve`` in its own process on 127.0.0.1.
3. For each rate, runs wrk from another process for ``--seconds``. Its Lua script asks for
   a random user's feed on every request (10% never-seen users) at the times of one
   Poisson arrival process of ``rate`` per second (exponential gaps, a monotonic clock
   through LuaJIT's ffi): a connection that becomes free takes the next arrival time and
   waits for it, so the offered rate holds whatever the latency. (Before 2026-11-22 each
   connection waited an exponential gap of ``connections / rate`` after its response, so
   the latency itself lowered the rate: 300 offered gave ~250-275 achieved.)
4. Records achieved rps, latency percentiles, non-2xx responses, the tier mix (counted by
   the Lua script from every response) and the share of requests one worker handed to
   another (``serving.offload``; from /metrics before and after).
5. Does the same against a bare ASGI app that returns a feed-sized JSON body: the cost of
   the HTTP layer alone (uvicorn + httptools + uvloop, no framework, no pipeline).
6. Reads the server's CPU time (all worker processes) before and after each rate: CPU ms
   per request, and the HTTP layer's share of it (bare CPU per request / ours). CPU per
   request is much less sensitive to a busy machine than latency.

wrk stays closed-loop underneath: when all ``--connections`` are waiting for responses, the
next arrival is sent late (and timed from when it was sent), so an overloaded server gets
fewer requests than offered. The achieved rate is reported beside the offered one, and the
share of arrivals sent more than 5 ms late with the largest lateness (``late_sends_share``,
``late_max_ms``): latency percentiles do not include that wait. A wrk that fails (a Lua
error, no result line) stops the bench instead of yielding figures.
"""

from __future__ import annotations

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
from typing import Any, Callable

import httpx

LUA = """
math.randomseed(%(seed)d)
local n_users = %(users)d
local gap_ms = %(gap_ms).4f
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } fr_timespec;
int clock_gettime(int clk_id, fr_timespec *tp);
]]
local tspec = ffi.new("fr_timespec")
local function now_ms() ffi.C.clock_gettime(1, tspec); return tonumber(tspec.tv_sec) * 1000 + tonumber(tspec.tv_nsec) / 1e6 end
local next_due = nil
request = function()
  local u
  if math.random() < 0.1 then u = "bench-new-" .. math.random(1, 1000000000) else u = "u" .. math.random(0, n_users - 1) end
  return wrk.format("GET", "/v1/feed?user_id=" .. u .. "&k=%(k)d")
end
-- one Poisson arrival schedule for the thread (exponential gaps of 1000/rate ms): a connection
-- that becomes free takes the next arrival time and waits for it, so the offered rate holds
-- whatever the latency; an arrival due while every connection is busy is sent late, at once
delay = function()
  local now = now_ms()
  if next_due == nil then next_due = now end
  next_due = next_due - math.log(1 - math.random()) * gap_ms
  local d = next_due - now
  n_sched = n_sched + 1
  if d < -5 then n_late = n_late + 1 end  -- sent more than 5 ms after its arrival time
  if -d > late_max then late_max = -d end
  if d < 0 then return 0 end
  return d
end
-- the tier of every response, counted here: with several workers /metrics is per process
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) n_full, n_reduced, n_fallback, n_other, n_sched, n_late, late_max = 0, 0, 0, 0, 0, 0, 0 end
response = function(status, headers, body)
  local t = string.match(body or "", '"tier":"(%%a+)"')
  if t == "full" then n_full = n_full + 1 elseif t == "reduced" then n_reduced = n_reduced + 1
  elseif t == "fallback" then n_fallback = n_fallback + 1 else n_other = n_other + 1 end
end
done = function(summary, latency, requests)
  local f, r, b, o = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    f = f + (t:get("n_full") or 0); r = r + (t:get("n_reduced") or 0)
    b = b + (t:get("n_fallback") or 0); o = o + (t:get("n_other") or 0)
  end
  io.write(string.format("TIERS full=%%d reduced=%%d fallback=%%d other=%%d\\n", f, r, b, o))
  local ns, nl, lm = 0, 0, 0
  for _, t in ipairs(threads) do
    ns = ns + (t:get("n_sched") or 0); nl = nl + (t:get("n_late") or 0); lm = math.max(lm, t:get("late_max") or 0)
  end
  io.write(string.format("LATE scheduled=%%d late=%%d max_ms=%%.1f\\n", ns, nl, lm))
end
"""

BARE_APP = '''
import orjson
BODY = orjson.dumps({"items": [{"item_id": "i%%d" %% i, "score": 0.5, "rank": i, "source": "ann",
                               "title": "a title of typical length for a news item", "category": "news"} for i in range(%(k)d)]})
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
'''


def _wait_http(url: str, timeout: float = 600.0, proc: subprocess.Popen | None = None) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready (see server.log in the bench workdir)")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server at {url} did not come up in {timeout:.0f}s")


def _metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return None if m is None else float(m.group(1))


def wait_consumers_idle(url: str, timeout: float = 900.0, quiet_s: float = 2.0) -> float:
    """Before any load: wait until the live features' consumer (the node's, or each
    worker's) has opened the log and applied what it holds: a heartbeat, and the applied
    count unchanged over ``quiet_s``. A server started on a large events folder (the bench
    reuses one) otherwise spends its first minute catching up inside the measured runs.
    Returns the seconds waited (at most ``timeout``; no live features: at once)."""
    t0, last = time.time(), None
    while time.time() - t0 < timeout:
        try:
            text = httpx.get(url + "/metrics", timeout=5.0).text
        except httpx.HTTPError:
            text = ""
        applied = _metric(text, "feedrank_features_node_consumer_applied")
        if applied is None:
            applied = _metric(text, "feedrank_features_consumer_applied_total")
        age = _metric(text, "feedrank_features_heartbeat_age_seconds")
        if applied is None and "feedrank_features_served_total" not in text and text:
            return time.time() - t0  # features.live off
        if age is not None and age == age and applied is not None and applied == last:
            return time.time() - t0
        last = applied if age is not None and age == age else None
        time.sleep(quiet_s)
    return time.time() - t0


def _parse_wrk(out: str) -> dict[str, Any]:
    def ms(text: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", text)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000.0 if unit == "us" else v * 1000.0 if unit == "s" else v

    res: dict[str, Any] = {}
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)
        res[f"p{p}_ms"] = ms(m.group(1)) if m else None
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["achieved_rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else None
    m = re.search(r"TIERS full=(\d+) reduced=(\d+) fallback=(\d+) other=(\d+)", out)
    if m:
        res["tier_counts"] = dict(zip(("full", "reduced", "fallback", "other"), map(int, m.groups())))
    m = re.search(r"LATE scheduled=(\d+) late=(\d+) max_ms=([\d.]+)", out)
    if m:  # arrivals sent > 5 ms after their time because every connection was busy (overload)
        sched, late = int(m.group(1)), int(m.group(2))
        res["late_sends_share"] = round(late / sched, 4) if sched else 0.0
        res["late_max_ms"] = float(m.group(3))
    return res


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid``, started by any of its threads (``/proc/PID/task/*/
    children``: the uvicorn workers from the main thread, the node consumer from its keeper)."""
    out: list[int] = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")) if Path(f"/proc/{pid}/task").is_dir() else []:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live children (the
    uvicorn workers, the node consumer). Less sensitive to a busy machine than latency: the
    cost per request."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid] + child_pids(pid)
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def _run_wrk(url: str, rate: float, seconds: int, connections: int, users: int, k: int, seed: int) -> dict[str, Any]:
    gap_ms = 1000.0 / rate  # one wrk thread: its connections share one arrival schedule
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % {"seed": seed, "users": users, "gap_ms": gap_ms, "k": k})
        script = f.name
    try:
        proc = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", script, url],
                              capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(script)
    out = proc.stdout
    if proc.returncode != 0 or "TIERS " not in out or proc.stderr.strip():  # e.g. a Lua error: never a silent result
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {proc.stderr.strip() or out.strip()[-500:]}")
    res = _parse_wrk(out)
    res["offered_rps"] = rate
    return res


def _offloaded(url: str) -> tuple[float, float] | None:
    """(feeds handed to another worker, failed hand-overs) so far, summed over the workers
    (/metrics), or None when the server does not say."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    got = {"sent": 0.0, "failed": 0.0}
    seen = False
    for line in text.splitlines():
        m = re.match(r'^feedrank_offload_total\{result="(\w+)"\} (\S+)$', line)
        if m and m.group(1) in got:
            got[m.group(1)] += float(m.group(2))
            seen = True
    return (got["sent"], got["failed"]) if seen else None


def ensure_model(workdir: Path, users: int, items: int, days: int, activity: float, say: Callable[[str], None]) -> Path:
    """Synthesize and train once per size; later runs reuse the model."""
    from feedrank.config import load_config
    from feedrank.data.synth import WorldConfig, generate_world
    from feedrank.pipeline.build import train_model

    model = workdir / "model"
    if (model / "manifest.json").exists():
        say(f"reusing {model}")
        return model
    if (workdir / "world" / "dataset.json").exists():
        say(f"reusing {workdir / 'world'}")
    else:
        start = float(int(time.time() // 3600 * 3600) - days * 86400)
        say(f"synthesising {users:,} users x {items:,} items x {days} days")
        generate_world(workdir / "world", WorldConfig(n_users=users, n_items=items, n_days=days, start=start,
                                                      activity_mean=activity), progress=True)
    cfg = load_config(None, ["retrieval.epochs=1", "ranking.epochs=1"])
    say("training (no offline eval)")
    train_model(workdir / "world", model, cfg, show_progress=True, say=say)
    return model


def run_serve_bench(workdir: Path, users: int, items: int, days: int, activity: float, rates: list[float], seconds: int,
                    connections: int, k: int, say: Callable[[str], None], settings: tuple[str, ...] = (),
                    workers: int = 1, warmup_s: int = 10) -> dict[str, Any]:
    """``warmup_s``: seconds of unmeasured load at the first rate before the measured rates
    (0: only a 3 s trickle): a fresh server's first seconds touch the bundle's pages and run
    slower than its steady state."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: apt-get install -y wrk")
    from feedrank.serving.server import free_port

    model = ensure_model(workdir, users, items, days, activity, say)
    port, bare_port = free_port(), free_port()
    exe = str(Path(sys.executable).parent / "feedrank")
    server = subprocess.Popen([exe, "serve", "--model", str(model), "--port", str(port), "--log-level", "warning",
                               "--events-dir", str(workdir / "events"), "--workers", str(workers), *settings],
                              stdout=subprocess.DEVNULL,
                              stderr=open(workdir / "server.log", "wb"))  # a file: a full pipe would stall the server
    bare_dir = Path(tempfile.mkdtemp())
    (bare_dir / "bare_app.py").write_text(BARE_APP % {"k": k})
    bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(bare_port), "--log-level", "warning",
                             "--no-access-log"], cwd=bare_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, bare_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
    out: dict[str, Any] = {"users": users, "items": items, "k": k, "connections": connections, "seconds_per_rate": seconds,
                           "server": f"feedrank serve --workers {workers}", "workers": workers, "settings": list(settings),
                           "warmup_seconds": warmup_s, "rates": []}
    try:
        say("waiting for the server (loading the model)")
        _wait_http(url + "/readyz", timeout=1800.0, proc=server)  # N workers each load the bundle (1M items: minutes)
        _wait_http(bare_url + "/")
        say("waiting for the live features' consumer to catch up with the events folder")
        out["consumer_catch_up_s"] = round(wait_consumers_idle(url), 1)
        # warm-up, then one measurement per rate
        _run_wrk(url, 50, 3, 4, users, k, seed=1)
        if warmup_s > 0 and rates:
            say(f"warming up: {warmup_s} s at {rates[0]:.0f} rps (not measured)")
            _run_wrk(url, rates[0], warmup_s, connections, users, k, seed=2)
        for i, rate in enumerate(rates):
            off0 = _offloaded(url)
            cpu0 = _tree_cpu_s(server.pid)
            res = _run_wrk(url, rate, seconds, connections, users, k, seed=10 + i)
            cpu1 = _tree_cpu_s(server.pid)
            off1 = _offloaded(url)
            if off0 is not None and off1 is not None and res["requests"]:  # serving.offload (serving/offload.py)
                res["handed_over_share"] = round((off1[0] - off0[0]) / res["requests"], 4)
                res["hand_over_failures"] = int(off1[1] - off0[1])
            counts = {t: v for t, v in (res.get("tier_counts") or {}).items() if v}
            total = sum(counts.values()) or 1
            res["tier_share"] = {t: round(v / total, 4) for t, v in counts.items()}
            # CPU over the requests wrk completed (a few in flight at the edges: noise < 1/requests)
            res["server_cpu_ms_per_request"] = round(1000.0 * (cpu1 - cpu0) / max(res["requests"] or 1, 1), 3)
            bcpu0 = _tree_cpu_s(bare.pid)
            bare_res = _run_wrk(bare_url + "/", rate, max(3, seconds // 3), connections, users, k, seed=20 + i)
            bare_cpu = 1000.0 * (_tree_cpu_s(bare.pid) - bcpu0) / max(bare_res["requests"] or 1, 1)
            res["bare_asgi"] = {key: bare_res[key] for key in ("p50_ms", "p99_ms", "achieved_rps")}
            res["bare_asgi"]["cpu_ms_per_request"] = round(bare_cpu, 3)
            if res["p50_ms"] and bare_res["p50_ms"]:
                res["http_layer_share_p50"] = round(bare_res["p50_ms"] / res["p50_ms"], 4)
            if res["server_cpu_ms_per_request"] > 0:  # the HTTP server's own CPU vs a whole feed request's
                res["http_layer_share_cpu"] = round(bare_cpu / res["server_cpu_ms_per_request"], 4)
            out["rates"].append(res)
            say(f"offered {rate:.0f} rps: achieved {res['achieved_rps']}, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
                f"tiers {res['tier_share']}, handed over {res.get('handed_over_share', 0.0):.1%}, "
                f"sent late {res.get('late_sends_share', 0.0):.1%} (max {res.get('late_max_ms', 0.0):.0f} ms), "
                f"server CPU {res['server_cpu_ms_per_request']} ms/request, "
                f"bare p50 {bare_res['p50_ms']} ms, bare CPU {bare_cpu:.3f} ms/request")
    finally:
        for p in (server, bare):
            p.send_signal(signal.SIGINT)
        for p in (server, bare):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(bare_dir, ignore_errors=True)
    return out
