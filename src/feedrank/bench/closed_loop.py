"""The closed loop on the synthetic world, against a live server (``feedrank simulate``).

    result = run_closed_loop(httpx.Client(base_url=url), LiveWorld(world), LoopConfig(minutes=60, speed=6.0),
                             retrainer=SubprocessRetrainer([...]))
    plot_loop(result, "var/sim/loop.png")

Every simulated minute (``speed`` real seconds): ``requests_per_minute`` visits by the
world's users (drawn by activity) each GET a feed, click by the world's position-based
click model and POST their clicks and dwell to ``/v1/events`` (impressions are logged by
the server itself, so they are not posted). At ``breaking.start_minute`` the breaking-news
items are POSTed to ``/v1/items``. Every ``retrain_every`` simulated minutes a retrain is
started in the background (``feedrank retrain`` as a subprocess: its own process, so the
loop and the server keep going); the server hot-swaps when it promotes. The result holds
per-minute counts by tier, arm and model version, the retrains, and the minutes until
the breaking topic reached ``pickup_share`` of the feeds.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import httpx
import numpy as np

from feedrank.data.synth.live import BreakingNews, LiveWorld


@dataclass(frozen=True)
class LoopConfig:
    minutes: int = 60
    speed: float = 6.0                 # real seconds per simulated minute
    requests_per_minute: int = 120
    k: int = 10
    retrain_every: float | None = 10.0  # simulated minutes (None: no retraining)
    breaking: BreakingNews = field(default_factory=BreakingNews)
    pickup_share: float = 0.05         # the topic "reached feeds" once this share of feeds shows it
    workers: int = 4
    seed: int = 0


@dataclass
class Visit:
    tier: str
    arm: str
    version: str
    shown: int
    clicks: int
    breaking_shown: int
    breaking_clicks: int
    latency_ms: float
    error: str | None = None


@dataclass
class MinuteStats:
    minute: int
    t_real: float
    requests: int = 0
    errors: int = 0
    impressions: int = 0
    clicks: int = 0
    feeds_with_breaking: int = 0
    breaking_impressions: int = 0
    breaking_clicks: int = 0
    by_tier: dict[str, list[int]] = field(default_factory=dict)     # tier -> [impressions, clicks]
    by_arm: dict[str, list[int]] = field(default_factory=dict)
    by_version: dict[str, list[int]] = field(default_factory=dict)
    p50_ms: float = 0.0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else float("nan")


class Retrainer(Protocol):
    def start(self) -> bool: ...          # False if one is still running
    def running(self) -> bool: ...
    def poll(self) -> list[dict]: ...     # results finished since the last poll


class SubprocessRetrainer:
    """Runs ``cmd`` (a ``feedrank retrain ... --json`` command line) in the background;
    each run's last JSON line on stdout is its result."""

    def __init__(self, cmd: list[str], log_path: Path | None = None) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._started = 0.0
        self._done: list[dict] = []
        self._lock = threading.Lock()

    def start(self) -> bool:
        if self.running():
            return False
        self._done.extend(self.poll())  # a finished run not yet polled: keep its result
        err = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=err)
        self._started = time.time()
        return True

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def poll(self) -> list[dict]:
        p = self._proc
        if p is None or p.poll() is None:
            done, self._done = self._done, []
            return done
        out = p.stdout.read().decode() if p.stdout else ""
        self._proc = None
        lines = [x for x in out.splitlines() if x.startswith("{")]
        try:
            res = json.loads(lines[-1]) if lines else {"action": "failed", "detail": f"exit code {p.returncode}"}
        except json.JSONDecodeError:
            res = {"action": "failed", "detail": out[-200:]}
        res["real_seconds"] = time.time() - self._started
        res["returncode"] = p.returncode
        done, self._done = self._done + [res], []
        return done

    def wait(self, timeout: float) -> list[dict]:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self.poll()


@dataclass
class LoopResult:
    config: dict[str, Any]
    minutes: list[MinuteStats]
    retrains: list[dict]
    swaps: list[dict]                  # {"minute", "from", "to"} first minute a new model version answered
    breaking: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "summary": self.summary, "breaking": self.breaking, "retrains": self.retrains,
                "swaps": self.swaps, "minutes": [{**asdict(m), "ctr": m.ctr} for m in self.minutes]}


def _visit(client: httpx.Client, live: LiveWorld, user: str, k: int, rng: np.random.Generator) -> Visit:
    t = time.perf_counter()
    try:
        r = client.get("/v1/feed", params={"user_id": user, "k": k})
        r.raise_for_status()
        body = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Visit("error", "-", "-", 0, 0, 0, 0, (time.perf_counter() - t) * 1000, f"{type(exc).__name__}: {exc}")
    lat = (time.perf_counter() - t) * 1000
    items = body.get("items", [])
    ids = [it["item_id"] for it in items]
    pos = [int(it["rank"]) - 1 for it in items]
    now = time.time()
    clicks, dwell = live.feedback(rng, user, ids, pos, now) if ids else (np.zeros(0, bool), np.zeros(0))
    rid = body.get("request_id")
    events = []
    for j in np.flatnonzero(clicks):
        base = {"ts": now, "user_id": user, "item_id": ids[j], "position": pos[j], "request_id": rid}
        events.append({**base, "event_id": f"{rid}:{pos[j]}:click", "kind": "click"})
        events.append({**base, "event_id": f"{rid}:{pos[j]}:dwell", "kind": "dwell", "dwell_ms": float(dwell[j])})
    err = None
    if events:
        try:
            client.post("/v1/events", json={"events": events}).raise_for_status()
        except httpx.HTTPError as exc:
            err = f"events: {type(exc).__name__}: {exc}"
    br = live.is_breaking(ids)
    return Visit(str(body.get("tier")), str(body.get("arm") or "default"), str(body.get("model_version")), len(ids),
                 int(clicks.sum()), int(br.sum()), int((br & clicks).sum()), lat, err)


def _add(d: dict[str, list[int]], key: str, imps: int, clicks: int) -> None:
    cur = d.setdefault(key, [0, 0])
    cur[0] += imps
    cur[1] += clicks


def run_closed_loop(client: httpx.Client, live: LiveWorld, cfg: LoopConfig, retrainer: Retrainer | None = None,
                    say: Callable[[str], None] = print) -> LoopResult:
    """Run ``cfg.minutes`` simulated minutes against the server behind ``client``."""
    t0 = time.time()
    minutes: list[MinuteStats] = []
    retrains: list[dict] = []
    swaps: list[dict] = []
    last_version: str | None = None
    breaking_items: list[dict] = []
    reposts = 0
    post_error: str | None = None
    pool = ThreadPoolExecutor(max_workers=cfg.workers)
    try:
        for m in range(cfg.minutes):
            start = t0 + m * cfg.speed
            if time.time() < start:
                time.sleep(start - time.time())
            if m == int(cfg.breaking.start_minute):
                breaking_items = live.breaking_items(time.time())
                r = client.post("/v1/items", json={"items": breaking_items})
                if r.status_code >= 400:  # e.g. 501 from a service that cannot add items: the loop goes on
                    post_error = f"POST /v1/items: {r.status_code} {r.text[:200]}"
                    say(f"minute {m}: breaking news NOT posted: {post_error}")
                    breaking_items = []
                else:
                    say(f"minute {m}: breaking news: {len(breaking_items)} items of topic {live.category!r} posted "
                        f"({'new' if live.is_new_topic else 'rare'} topic; {int(live.interested.sum()):,} users interested)")
            if retrainer is not None and cfg.retrain_every and m > 0 and m % cfg.retrain_every == 0:
                if retrainer.start():
                    retrains.append({"minute_started": m, "t_started": time.time() - t0})
                    say(f"minute {m}: retrain started")
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, m]))
            users = live.visitors(rng, cfg.requests_per_minute, time.time())
            seeds = rng.integers(0, 2**63 - 1, size=len(users))
            visits = list(pool.map(lambda a: _visit(client, live, a[0], cfg.k, np.random.default_rng(a[1])), zip(users, seeds)))
            st = MinuteStats(minute=m, t_real=time.time() - t0)
            lats = []
            for v in visits:
                st.requests += 1
                if v.error and v.tier == "error":
                    st.errors += 1
                    continue
                st.errors += int(v.error is not None)
                st.impressions += v.shown
                st.clicks += v.clicks
                st.feeds_with_breaking += int(v.breaking_shown > 0)
                st.breaking_impressions += v.breaking_shown
                st.breaking_clicks += v.breaking_clicks
                _add(st.by_tier, v.tier, v.shown, v.clicks)
                _add(st.by_arm, v.arm, v.shown, v.clicks)
                _add(st.by_version, v.version, v.shown, v.clicks)
                lats.append(v.latency_ms)
                if v.version != last_version:
                    if last_version is not None and v.version not in {s["to"] for s in swaps}:
                        swaps.append({"minute": m, "from": last_version, "to": v.version})
                        say(f"minute {m}: now served by model {v.version}")
                    last_version = v.version
            st.p50_ms = float(np.median(lats)) if lats else 0.0
            minutes.append(st)
            if breaking_items and swaps and swaps[-1]["minute"] == m:
                reposts += _ensure_items(client, breaking_items)
            if retrainer is not None:
                for res in retrainer.poll():
                    _record_retrain(retrains, res, m, t0, say)
            say(f"minute {m}: {st.requests} feeds, CTR {st.ctr:.4f}, breaking in {st.feeds_with_breaking} feeds, "
                f"p50 {st.p50_ms:.0f} ms, errors {st.errors}")
    finally:
        pool.shutdown(wait=True)
    if retrainer is not None and retrainer.running() and isinstance(retrainer, SubprocessRetrainer):
        for res in retrainer.wait(timeout=600):
            _record_retrain(retrains, res, len(minutes), t0, say)
    result = LoopResult(config={**asdict(cfg), "breaking": asdict(cfg.breaking)}, minutes=minutes, retrains=retrains,
                        swaps=swaps, breaking={})
    result.breaking = breaking_summary(minutes, cfg)
    result.breaking.update({"topic": live.category, "new_topic": live.is_new_topic, "interested_users": int(live.interested.sum())})
    result.breaking["items_reposted_after_swaps"] = reposts
    result.breaking["post_error"] = post_error
    result.summary = summarize(result)
    return result


def _record_retrain(retrains: list[dict], res: dict, minute: int, t0: float, say: Callable[[str], None]) -> None:
    open_ = next((r for r in retrains if "minute_finished" not in r), None)
    entry = open_ if open_ is not None else {}
    entry.update({"minute_finished": minute, "action": res.get("action"), "version": res.get("version"),
                  "detail": res.get("detail"), "real_seconds": round(float(res.get("real_seconds", 0.0)), 1),
                  "gate": res.get("gate"), "check": res.get("check")})
    if open_ is None:
        retrains.append(entry)
    say(f"minute {minute}: retrain finished: {entry['action']} {entry.get('version') or ''} ({entry['detail']})")


def _ensure_items(client: httpx.Client, items: list[dict]) -> int:
    """After a model swap: re-POST the breaking items if the new model lacks them (the
    serving manager builds the new Recommender from its bundle; items added while it was
    being trained are not in it). Returns how many were re-posted."""
    try:
        if client.get(f"/v1/items/{items[0]['item_id']}").status_code != 404:
            return 0
        client.post("/v1/items", json={"items": items}).raise_for_status()
        return len(items)
    except httpx.HTTPError:
        return 0


def breaking_summary(minutes: list[MinuteStats], cfg: LoopConfig) -> dict[str, Any]:
    """When the breaking topic reached ``pickup_share`` of the feeds (simulated minutes after
    it was posted; None if it never did), and its CTR afterwards."""
    s = int(cfg.breaking.start_minute)
    after = [m for m in minutes if m.minute >= s]
    reached = next((m for m in after if m.requests and m.feeds_with_breaking / m.requests >= cfg.pickup_share), None)
    imps = sum(m.breaking_impressions for m in after)
    clicks = sum(m.breaking_clicks for m in after)
    return {
        "start_minute": s,
        "pickup_share": cfg.pickup_share,
        "reached_minute": None if reached is None else reached.minute,
        "minutes_to_reach_feeds": None if reached is None else reached.minute - s + 1,  # counted to the end of that minute
        "real_seconds_to_reach_feeds": None if reached is None else round((reached.minute - s + 1) * cfg.speed, 1),
        "share_of_feeds_by_minute": [round(m.feeds_with_breaking / m.requests, 4) if m.requests else 0.0 for m in after],
        "impressions": imps,
        "ctr": clicks / imps if imps else None,
    }


def summarize(res: LoopResult) -> dict[str, Any]:
    """CTR per model version served and before/after each promotion, totals per tier/arm."""
    ms = res.minutes
    tot_i = sum(m.impressions for m in ms)
    tot_c = sum(m.clicks for m in ms)
    by: dict[str, dict[str, list[int]]] = {"tier": defaultdict(lambda: [0, 0]), "arm": defaultdict(lambda: [0, 0]),
                                           "version": defaultdict(lambda: [0, 0])}
    for m in ms:
        for name, d in (("tier", m.by_tier), ("arm", m.by_arm), ("version", m.by_version)):
            for key, (i, c) in d.items():
                by[name][key][0] += i
                by[name][key][1] += c

    def ctr(pairs: dict[str, list[int]]) -> dict[str, dict[str, float]]:
        return {k: {"impressions": v[0], "clicks": v[1], "ctr": v[1] / v[0] if v[0] else float("nan")} for k, v in pairs.items()}

    def window(lo: int, hi: int) -> float | None:
        i = sum(m.impressions for m in ms if lo <= m.minute < hi)
        c = sum(m.clicks for m in ms if lo <= m.minute < hi)
        return c / i if i else None

    versions_in_order = []
    for m in ms:
        for v in sorted(m.by_version, key=lambda x: -m.by_version[x][0]):
            if v not in versions_in_order:
                versions_in_order.append(v)
    around = [{"minute": s["minute"], "to": s["to"], "ctr_before": window(s["minute"] - 10, s["minute"]),
               "ctr_after": window(s["minute"], s["minute"] + 10)} for s in res.swaps]
    first_swap = res.swaps[0]["minute"] if res.swaps else None
    return {
        "minutes": len(ms), "requests": sum(m.requests for m in ms), "errors": sum(m.errors for m in ms),
        "impressions": tot_i, "clicks": tot_c, "ctr": tot_c / tot_i if tot_i else None,
        "ctr_by_tier": ctr(by["tier"]), "ctr_by_arm": ctr(by["arm"]),
        "ctr_by_model_version": {v: ctr(by["version"])[v] for v in versions_in_order},
        "ctr_around_swaps": around,
        "ctr_before_first_swap": None if first_swap is None else window(0, first_swap),
        "ctr_after_last_swap": None if not res.swaps else window(res.swaps[-1]["minute"], len(ms)),
        "retrains_promoted": sum(1 for r in res.retrains if r.get("action") in ("promoted", "canary")),
        "breaking_minutes_to_reach_feeds": res.breaking.get("minutes_to_reach_feeds"),
    }


def plot_loop(res: LoopResult, path: str | Path, smooth: int = 3) -> Path:
    """PNG: CTR per simulated minute (overall, per tier, per arm; ``smooth``-minute rolling
    ratio) with retrains/swaps marked, and the share of feeds showing the breaking topic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = res.minutes
    x = np.array([m.minute for m in ms])

    def rolling(pairs: list[tuple[int, int]]) -> np.ndarray:
        i = np.array([p[0] for p in pairs], dtype=float)
        c = np.array([p[1] for p in pairs], dtype=float)
        ker = np.ones(smooth)
        si, sc = np.convolve(i, ker)[: len(i)], np.convolve(c, ker)[: len(c)]
        return np.where(si > 0, sc / np.maximum(si, 1), np.nan)

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    ax.plot(x, rolling([(m.impressions, m.clicks) for m in ms]), color="black", lw=2, label="all feeds")
    for group, style in (("by_tier", "--"), ("by_arm", ":")):
        keys = sorted({k for m in ms for k in getattr(m, group)})
        if len(keys) < 2 and group == "by_arm":
            continue
        for key in keys:
            ax.plot(x, rolling([tuple(getattr(m, group).get(key, [0, 0])) for m in ms]), style, lw=1.2,
                    label=f"{group[3:]} {key}")
    for r in res.retrains:
        if r.get("minute_finished") is not None:
            ax.axvline(r["minute_finished"], color="tab:green", alpha=0.35, lw=1)
    for s in res.swaps:
        ax.axvline(s["minute"], color="tab:green", lw=2)
        ax.annotate(f"swap -> {s['to'][:14]}", (s["minute"], ax.get_ylim()[1]), fontsize=7, rotation=90, va="top")
    b = res.breaking.get("start_minute")
    for a in (ax, bx):
        if b is not None:
            a.axvline(b, color="tab:red", lw=1.5, ls="--")
    ax.set_ylabel(f"CTR ({smooth}-min rolling)")
    ax.set_title("closed loop: CTR per simulated minute (green: model swaps; red: breaking news posted)")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    share = np.array([m.feeds_with_breaking / m.requests if m.requests else 0.0 for m in ms])
    bx.plot(x, share, color="tab:red")
    bx.axhline(res.breaking.get("pickup_share", 0.05), color="grey", lw=0.8, ls=":")
    bx.set_ylabel("feeds with\nbreaking topic")
    bx.set_xlabel("simulated minute")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
