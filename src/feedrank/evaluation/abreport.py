"""Per-arm A/B results from logged events, with intervals and a significance test.

    report = ab_report(EventLog(dir).iter_events(), experiment="fresh-feed")

The unit of randomisation is the user, and impressions in one request are not
independent. So CTR (clicks / impressions) is a ratio metric whose variance comes from
the delta method over *requests*:

    Var(C/N) ~ (s_c^2 - 2 r s_cn + r^2 s_n^2) / (R * nbar^2),  r = C/N

with per-request click and impression counts. Each arm is compared with the control arm
(named "control", else the first arm seen) by a two-sided z-test on the difference. Dwell
is the mean ``dwell_ms`` of dwell events, with a normal interval. Clicks and dwell join
their arm through the impression's ``request_id``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from feedrank.types import Event, EventKind

Z95 = 1.959963984540054


def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True)
class ArmResult:
    arm: str
    users: int
    requests: int
    impressions: int
    clicks: int
    ctr: float
    ctr_ci95: tuple[float, float]
    dwell_events: int
    dwell_ms_mean: float | None
    dwell_ms_ci95: tuple[float, float] | None
    vs_control: dict[str, float] | None   # diff, diff_ci95 low/high, relative lift, z, p_value


def ratio_stats(clicks: np.ndarray, imps: np.ndarray) -> tuple[float, float]:
    """(ratio, variance of the ratio) by the delta method over units (requests)."""
    n_units = len(imps)
    total = float(imps.sum())
    if n_units < 2 or total == 0:
        return (float(clicks.sum()) / total if total else float("nan")), float("nan")
    r = float(clicks.sum()) / total
    nbar = total / n_units
    s_c = float(np.var(clicks, ddof=1))
    s_n = float(np.var(imps, ddof=1))
    s_cn = float(np.cov(clicks, imps, ddof=1)[0, 1])
    var = (s_c - 2 * r * s_cn + r * r * s_n) / (n_units * nbar * nbar)
    return r, max(var, 0.0)


def compare(r_a: float, v_a: float, r_b: float, v_b: float) -> dict[str, float]:
    """Treatment b minus control a: difference, its 95% interval, lift, z and p."""
    diff = r_b - r_a
    se = math.sqrt(v_a + v_b) if v_a == v_a and v_b == v_b else float("nan")
    z = diff / se if se and se == se else float("nan")
    p = 2 * _norm_sf(abs(z)) if z == z else float("nan")
    return {"diff": diff, "diff_ci95_low": diff - Z95 * se, "diff_ci95_high": diff + Z95 * se,
            "relative_lift": diff / r_a if r_a else float("nan"), "z": z, "p_value": p}


SESSION_GAP_S = 1800.0


def online_metrics(events: list[Event], req_arm: dict[str, str], creator_of: dict[str, str] | None = None,
                   session_gap_s: float = SESSION_GAP_S) -> dict[str, dict[str, Any]]:
    """Online-style metrics per arm from the event log.

    A user's session is a run of their feed requests with gaps under ``session_gap_s``
    (30 min). Per arm: ``sessions``; ``requests_per_session`` (session length in feeds);
    ``session_minutes`` (first to last event of a session, clicks and dwell included);
    ``dwell_s_per_session`` (sum of dwell); ``return_rate`` (share of the arm's users with a
    second session); ``items_reached`` and, given ``creator_of`` (item -> creator),
    ``creators_reached`` (distinct creators shown) and ``creators_clicked``, with
    ``creator_exposure_top10_share`` (share of impressions going to the top 10% creators).
    """
    by_user: dict[tuple[str, str], list[tuple[float, str, Event]]] = defaultdict(list)
    for ev in events:
        arm = req_arm.get(ev.request_id) if ev.request_id else None
        if arm is not None:
            by_user[(arm, ev.user_id)].append((ev.ts, ev.request_id or "", ev))
    out: dict[str, dict[str, Any]] = {}
    acc: dict[str, dict[str, Any]] = defaultdict(lambda: {"sessions": 0, "requests": 0, "seconds": 0.0, "dwell_ms": 0.0,
                                                          "users": 0, "returning": 0, "items": set(), "creator_imps": defaultdict(int),
                                                          "creators_clicked": set()})
    for (arm, _user), evs in by_user.items():
        a = acc[arm]
        evs.sort(key=lambda x: x[0])
        n_sessions = 0
        start = last = None
        reqs: set[str] = set()
        for ts, rid, ev in evs:
            if last is None or (ev.kind == EventKind.IMPRESSION and rid not in reqs and ts - last > session_gap_s):
                if start is not None:
                    a["seconds"] += last - start
                    a["requests"] += len(reqs)
                start, reqs = ts, set()
                n_sessions += 1
            last = max(ts, last) if last is not None else ts
            if ev.kind == EventKind.IMPRESSION:
                reqs.add(rid)
                a["items"].add(ev.item_id)
                if creator_of is not None:
                    a["creator_imps"][creator_of.get(ev.item_id, "unknown")] += 1
            elif ev.kind == EventKind.DWELL and ev.dwell_ms is not None:
                a["dwell_ms"] += float(ev.dwell_ms)
            elif ev.kind == EventKind.CLICK and creator_of is not None:
                a["creators_clicked"].add(creator_of.get(ev.item_id, "unknown"))
        if start is not None:
            a["seconds"] += last - start
            a["requests"] += len(reqs)
        a["sessions"] += n_sessions
        a["users"] += 1
        a["returning"] += n_sessions >= 2
    for arm, a in acc.items():
        ns = max(a["sessions"], 1)
        row: dict[str, Any] = {
            "sessions": a["sessions"],
            "requests_per_session": a["requests"] / ns,
            "session_minutes": a["seconds"] / ns / 60.0,
            "dwell_s_per_session": a["dwell_ms"] / 1000.0 / ns,
            "return_rate": a["returning"] / max(a["users"], 1),
            "items_reached": len(a["items"]),
        }
        if creator_of is not None:
            counts = np.sort(np.asarray(list(a["creator_imps"].values()), dtype=np.float64))[::-1]
            top = max(1, int(np.ceil(0.1 * len(counts))))
            row["creators_reached"] = len(counts)
            row["creators_clicked"] = len(a["creators_clicked"])
            row["creator_exposure_top10_share"] = float(counts[:top].sum() / counts.sum()) if counts.sum() > 0 else None
        out[arm] = row
    return out


def ab_report(events: Iterable[Event], experiment: str | None = None, creator_of: dict[str, str] | None = None) -> dict[str, Any]:
    """Aggregate logged events per arm. ``experiment`` selects one (arms are
    ``"<experiment>/<arm>"``); None reports every arm found. Each arm also gets ``online``
    (``online_metrics``; creators need ``creator_of``, item id -> creator)."""
    events = list(events)
    req_arm: dict[str, str] = {}
    req_imps: dict[str, int] = defaultdict(int)
    req_user: dict[str, str] = {}
    clicks: list[tuple[str, str]] = []
    dwells: list[tuple[str, float]] = []
    for ev in events:
        if ev.kind == EventKind.IMPRESSION and ev.arm and ev.request_id:
            if experiment is not None and not ev.arm.startswith(experiment + "/"):
                continue
            req_arm.setdefault(ev.request_id, ev.arm)
            req_imps[ev.request_id] += 1
            req_user.setdefault(ev.request_id, ev.user_id)
        elif ev.kind == EventKind.CLICK and ev.request_id:
            clicks.append((ev.request_id, ev.item_id))
        elif ev.kind == EventKind.DWELL and ev.request_id and ev.dwell_ms is not None:
            dwells.append((ev.request_id, float(ev.dwell_ms)))
    req_clicks: dict[str, int] = defaultdict(int)
    for rid, _ in set(clicks):  # a click per (request, item) counts once
        if rid in req_arm:
            req_clicks[rid] += 1
    by_arm: dict[str, list[str]] = defaultdict(list)
    for rid, arm in req_arm.items():
        by_arm[arm].append(rid)
    arm_dwell: dict[str, list[float]] = defaultdict(list)
    for rid, d in dwells:
        if rid in req_arm:
            arm_dwell[req_arm[rid]].append(d)
    names = sorted(by_arm)
    control = next((a for a in names if a.endswith("/control")), names[0] if names else None)
    stats: dict[str, tuple[float, float]] = {}
    results = []
    for arm in names:
        rids = by_arm[arm]
        c = np.array([req_clicks.get(r, 0) for r in rids], dtype=np.float64)
        n = np.array([req_imps[r] for r in rids], dtype=np.float64)
        r, v = ratio_stats(c, n)
        stats[arm] = (r, v)
        se = math.sqrt(v) if v == v else float("nan")
        d = np.asarray(arm_dwell.get(arm, []), dtype=np.float64)
        dm = float(d.mean()) if len(d) else None
        dci = None
        if len(d) > 1:
            h = Z95 * float(d.std(ddof=1)) / math.sqrt(len(d))
            dci = (dm - h, dm + h)
        results.append(ArmResult(arm=arm, users=len({req_user[x] for x in rids}), requests=len(rids), impressions=int(n.sum()),
                                 clicks=int(c.sum()), ctr=r, ctr_ci95=(r - Z95 * se, r + Z95 * se), dwell_events=len(d),
                                 dwell_ms_mean=dm, dwell_ms_ci95=dci, vs_control=None))
    if control is not None:
        results = [res if res.arm == control else
                   ArmResult(**{**asdict(res), "vs_control": compare(*stats[control], *stats[res.arm])}) for res in results]
    online = online_metrics(events, req_arm, creator_of)
    return {"experiment": experiment, "control": control,
            "arms": [{**asdict(r), "online": online.get(r.arm, {})} for r in results]}
