"""Simulate sessions, feeds and feedback in the synthetic world and write a canonical dataset.

Per day d (all vectorised numpy; memory bounded by ``session_chunk`` sessions at a time):

1. Each user who signed up before the day starts opens Poisson(activity_u) sessions at
   times drawn from a diurnal profile (in ``[day_start, day_end - 15 min)``).
2. Sessions, sorted by time, are processed in chunks: the logging policy (``policy.py``)
   shows a feed; every slot logs an ``impression`` (ts = session start); a slot is clicked
   with probability exam(pos) * a(u, i, t) (``world.py``); each click has a ``dwell`` event
   (ts = click ts + dwell_ms, dwell_ms lognormal, longer for quality items, capped at
   ``dwell_max_ms``); an unclicked slot is hidden with probability
   ``hide_max * exam(pos) * exp(-a / hide_scale)`` (unattractive items get hidden).
3. Events go through a time-ordered buffer: everything earlier than the next chunk's first
   session start is sorted and appended (one Parquet row group per append), so
   ``events.parquet`` is in non-decreasing time order and never held whole in memory.
4. At the end of the day the policy folds the day's clicks into its popularity and
   per-user category state (used from the next day on).

Ids: request ``r<n>`` (n counts sessions in time order from 0); event ``r<n>-<k><pos>`` with
k in i|c|d|h (impression, click, dwell, hide): unique and deterministic. Randomness comes
from ``SeedSequence([seed, stream, day, chunk])``, so a run is byte-identical for the same
config.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from feedrank.data.dataset import DatasetWriter
from feedrank.data.schema import DatasetMeta, TS_TYPE
from feedrank.data.synth.policy import LoggingPolicy
from feedrank.data.synth.vocab import build_vocab, make_titles
from feedrank.data.synth.world import DAY_S, GROUPS, World, WorldConfig

TRUTH_DIR = "truth"
SOURCE = "synthetic"
_KINDS = ("impression", "click", "dwell", "hide")
_LETTERS = ("i", "c", "d", "h")
_TAIL_MS = 900_000  # sessions start at least 15 min before the day ends
_FOLLOW_MAX_MS = 60_000  # clicks/hides happen within a minute of the session start
# relative session rate per hour of day (UTC): quiet nights, morning and evening peaks
DIURNAL = np.array([2, 1, 1, 1, 1, 2, 4, 7, 9, 8, 6, 6, 7, 6, 5, 5, 6, 7, 9, 10, 10, 8, 6, 4], dtype=np.float64)
DIURNAL = DIURNAL / DIURNAL.sum()
_COLS = ("ts", "user", "item", "kind", "pos", "req", "prop", "dwell")


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate_world`` wrote."""

    out: str
    meta: DatasetMeta
    n_sessions: int
    n_chunks_written: int
    seconds: float


def _rng(cfg: WorldConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, *stream]))


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(idx, type=pa.int64()), pa.string()), "")


def items_table(world: World) -> pa.Table:
    """``items.parquet`` rows (+ extra column ``creator_group``), item i = ``i<i>``."""
    cfg = world.config
    _, cat_words, sub_names, sub_words = build_vocab(cfg.n_categories)
    n = cfg.n_items
    titles = make_titles(_rng(cfg, 4), world.item_cat, world.item_sub, cat_words, sub_words)
    sub_off = np.concatenate([[0], np.cumsum([len(s) for s in sub_names])])
    flat_sub = [s for subs in sub_names for s in subs]
    ms = np.round(world.item_pub * 1000.0).astype(np.int64)
    return pa.table({
        "item_id": _ids("i", np.arange(n)),
        "title": titles,
        "category": pa.array(world.category_names).take(pa.array(world.item_cat.astype(np.int64))),
        "subcategory": pa.array(flat_sub).take(pa.array(sub_off[world.item_cat] + world.item_sub)),
        "creator": _ids("c", world.item_creator),
        "published_at": pa.array(ms, type=pa.int64()).cast(TS_TYPE),
        "creator_group": pa.array(list(GROUPS)).take(pa.array(world.creator_group[world.item_creator].astype(np.int64))),
    })


def users_table(world: World) -> pa.Table:
    """``users.parquet`` rows: user_id, activity (mean sessions/day), signup_at."""
    ms = np.round(world.user_signup * 1000.0).astype(np.int64)
    return pa.table({
        "user_id": _ids("u", np.arange(world.config.n_users)),
        "activity": pa.array(world.user_activity.astype(np.float64)),
        "signup_at": pa.array(ms, type=pa.int64()).cast(TS_TYPE),
    })


def events_to_arrow(ev: dict[str, np.ndarray]) -> pa.Table:
    """Numeric event columns -> a canonical events table (strings built in Arrow, no Python loop)."""
    req = pc.cast(pa.array(ev["req"], type=pa.int64()), pa.string())
    pos = pa.array(ev["pos"], type=pa.int32())
    kind = pa.array(ev["kind"].astype(np.int64))
    dwell = ev["dwell"]
    return pa.table({
        "event_id": pc.binary_join_element_wise("r", req, "-", pa.array(_LETTERS).take(kind), pc.cast(pos, pa.string()), ""),
        "ts": pa.array(ev["ts"], type=pa.int64()).cast(TS_TYPE),
        "user_id": _ids("u", ev["user"]),
        "item_id": _ids("i", ev["item"]),
        "kind": pa.array(_KINDS).take(kind),
        "position": pos,
        "request_id": pc.binary_join_element_wise("r", req, ""),
        "propensity": pa.array(ev["prop"], type=pa.float64()),
        "dwell_ms": pa.array(dwell, type=pa.float64(), mask=np.isnan(dwell)),
    })


class _TimeOrderedBuffer:
    """Holds events until no later chunk can produce an earlier one, then releases them sorted."""

    def __init__(self) -> None:
        self.held: dict[str, np.ndarray] | None = None

    def push(self, ev: dict[str, np.ndarray], watermark_ms: int | None) -> dict[str, np.ndarray] | None:
        """Add events; return (sorted) all held events with ts < watermark (all if None)."""
        if self.held is not None:
            ev = {k: np.concatenate([self.held[k], ev[k]]) for k in _COLS}
        order = np.argsort(ev["ts"], kind="stable")
        ev = {k: v[order] for k, v in ev.items()}
        cut = len(order) if watermark_ms is None else int(np.searchsorted(ev["ts"], watermark_ms, side="left"))
        self.held = {k: v[cut:] for k, v in ev.items()}
        if cut == 0:
            return None
        return {k: v[:cut] for k, v in ev.items()}


class Simulator:
    """Runs the world day by day; ``run_day`` yields events tables in time order."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.cfg = world.config
        self.policy = LoggingPolicy(world)
        self.buffer = _TimeOrderedBuffer()
        self.next_request = 0
        self.n_sessions = 0

    def sessions(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        """(users (S,) int64, start ms (S,) int64) of day ``day``, sorted by time."""
        cfg, w = self.cfg, self.world
        rng = _rng(cfg, 2, day)
        day_start = cfg.start + day * DAY_S
        active = np.flatnonzero(w.user_signup < day_start)
        n = rng.poisson(w.user_activity[active].astype(np.float64))
        users = np.repeat(active, n)
        hour = rng.choice(24, size=len(users), p=DIURNAL)
        frac = (hour + rng.random(len(users))) / 24.0
        t_ms = int(round(day_start * 1000)) + np.floor(frac * (DAY_S * 1000 - _TAIL_MS)).astype(np.int64)
        order = np.argsort(t_ms, kind="stable")
        return users[order].astype(np.int64), t_ms[order]

    def run_day(self, day: int) -> Iterator[pa.Table]:
        """Simulate one day; yield its events (time-ordered tables, one per session chunk)."""
        cfg = self.cfg
        users, t_ms = self.sessions(day)
        S = len(users)
        day_end_ms = int(round((cfg.start + (day + 1) * DAY_S) * 1000))
        for k, a in enumerate(range(0, S, cfg.session_chunk)):
            b = min(a + cfg.session_chunk, S)
            ev = self._chunk(_rng(cfg, 3, day, k), users[a:b], t_ms[a:b], self.next_request + a)
            watermark = int(t_ms[b]) if b < S else day_end_ms
            out = self.buffer.push(ev, watermark)
            if out is not None:
                yield events_to_arrow(out)
        self.next_request += S
        self.n_sessions += S
        self.policy.end_day()

    def _chunk(self, rng: np.random.Generator, users: np.ndarray, t_ms: np.ndarray, req0: int) -> dict[str, np.ndarray]:
        """Feeds and feedback for one chunk of sessions. Returns numeric event columns."""
        cfg, w = self.cfg, self.world
        feeds = self.policy.sample(rng, users, t_ms)
        s, pos, item, prop = feeds.session, feeds.position, feeds.item, feeds.propensity
        u, ts = users[s], t_ms[s]
        req = req0 + s
        a = w.attractiveness(u, item, ts / 1000.0)
        exam = w.examination(pos)
        click = rng.random(len(s)) < exam * a
        hide = ~click & (rng.random(len(s)) < cfg.hide_max * exam * np.exp(-a / cfg.hide_scale))
        follow = np.minimum(np.round(1000.0 * (1.0 + 1.5 * pos + rng.exponential(4.0, len(s)))), _FOLLOW_MAX_MS).astype(np.int64)
        c = np.flatnonzero(click)
        h = np.flatnonzero(hide)
        click_ts = ts[c] + follow[c]
        log_dwell = np.log(cfg.dwell_median_ms) + cfg.dwell_w_quality * w.item_quality[item[c]] + cfg.dwell_sigma * rng.standard_normal(len(c))
        dwell = np.minimum(np.round(np.exp(log_dwell)), cfg.dwell_max_ms)
        self.policy.observe_clicks(u[c], item[c])

        n_imp, n_c, n_h = len(s), len(c), len(h)
        nan = np.full(n_imp + n_c + n_h, np.nan)
        return {
            "ts": np.concatenate([ts, click_ts, click_ts + dwell.astype(np.int64), ts[h] + follow[h] + 1000]),
            "user": np.concatenate([u, u[c], u[c], u[h]]),
            "item": np.concatenate([item, item[c], item[c], item[h]]),
            "kind": np.concatenate([np.zeros(n_imp, np.int8), np.ones(n_c, np.int8), np.full(n_c, 2, np.int8), np.full(n_h, 3, np.int8)]),
            "pos": np.concatenate([pos, pos[c], pos[c], pos[h]]),
            "req": np.concatenate([req, req[c], req[c], req[h]]),
            "prop": np.concatenate([prop, prop[c], prop[c], prop[h]]),
            "dwell": np.concatenate([nan[:n_imp + n_c], dwell, nan[:n_h]]),
        }


def generate_world(out: str | Path, cfg: WorldConfig, progress: bool = True) -> SynthSummary:
    """Build a world from ``cfg`` and write the dataset folder ``out`` (+ ``out/truth/``)."""
    t0 = time.perf_counter()
    extra = {"generator": "feedrank.data.synth", "truth_dir": TRUTH_DIR, "config": asdict(cfg)}
    writer = DatasetWriter(out, source=SOURCE, extra=extra)
    try:
        world = World.build(cfg)
        world.save(writer.tmp / TRUTH_DIR)
        writer.write_items(items_table(world))
        writer.write_users(users_table(world))
        sim = Simulator(world)
        n_chunks = 0
        n_events = 0
        bar = tqdm(range(cfg.n_days), desc="synth days", unit="day", disable=not progress)
        for day in bar:
            for tbl in sim.run_day(day):
                writer.append_events(tbl)
                n_chunks += 1
                n_events += tbl.num_rows
            bar.set_postfix(sessions=sim.n_sessions, events=n_events)
        bar.close()
        meta = writer.close()
    except BaseException:
        writer.abort()
        raise
    return SynthSummary(out=str(out), meta=meta, n_sessions=sim.n_sessions, n_chunks_written=n_chunks,
                        seconds=time.perf_counter() - t0)
