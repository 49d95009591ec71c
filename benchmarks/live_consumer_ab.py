"""Interleaved A/B of the live consumer path (features/consumer.py -> StorePublisher), CPU
per event: the code before 2026-11-22 15:00 UTC (re-enacted by monkeypatching: Path.iterdir
partition listing, per-element record building, two-pass apply, 8192-record batches)
against the current code. Two partitions written 30 requests (~20.3 events each) at a
time between polls, as a server does at 300 rps; memory store; a 20k-item catalogue
binding, so publishing invalidates cached rows as in serving.

    python benchmarks/live_consumer_ab.py /tmp/evab 1200 4    # events folder, requests, rounds
"""
import sys, time, shutil, random, re
from pathlib import Path
import numpy as np
import feedrank.data.partitions as parts
import feedrank.features.live_io as lio
from feedrank.data.eventlog import EventLog
from feedrank.data.logformat import SEG_RE
from feedrank.data.partitions import PartitionedLog
from feedrank.features.consumer import LogConsumer
from feedrank.features.live import LiveFeatures
from feedrank.features.realtime import RealtimeFeatures
from feedrank.features.store.memory import MemoryStore
from feedrank.pipeline.artifacts import OnlineSnapshot
from feedrank.types import Event, EventKind

if len(sys.argv) != 4:
    sys.exit(__doc__)
root = Path(sys.argv[1]); n_req = int(sys.argv[2]); rounds = int(sys.argv[3])
N_ITEMS = 20000
rng = random.Random(0); T = time.time() - 3600
REQS = []
for r in range(n_req):
    for p in ("w0", "w1"):
        evs = [Event(f"{p}r{r}:{k}", T + r * 0.01, f"u{rng.randrange(20000)}", f"i{rng.randrange(N_ITEMS)}", EventKind.IMPRESSION, k, f"{p}r{r}", 0.5) for k in range(20)]
        if rng.random() < 0.3:
            evs.append(Event(f"{p}c{r}", T + r * 0.01, evs[0].user_id, evs[0].item_id, EventKind.CLICK))
        REQS.append((p, evs))
PER_POLL = 30  # ~300 rps x 0.1 s poll interval

new_roots, new_apply, new_records = parts.partition_roots, lio.StorePublisher.apply, lio.StorePublisher.records

def old_roots(root):
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(root)
    ps = sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := parts._PART_RE.match(p.name)))
    has_own = any(SEG_RE.match(p.name) for p in root.iterdir())
    return ([root] if has_own or not ps else []) + [p for _, p in ps]

def old_apply(self, events):
    events = list(events)
    n = self.rt.apply(events)
    items, users = {}, {}
    for ev in events:
        if ev.kind is EventKind.IMPRESSION or ev.kind is EventKind.CLICK:
            items[ev.item_id] = None
            if ev.ts > self.stream_now:
                self.stream_now = float(ev.ts)
        if ev.kind is EventKind.CLICK:
            users[ev.user_id] = None
    if items or users:
        self._publish(list(items), list(users))
    return n

def old_records(self, item_ids, user_ids):
    now = self.stream_now if np.isfinite(self.stream_now) else self.clock()
    rows = {}
    if item_ids:
        imps, clks = self.rt.counts(item_ids, now)
        trend = self.rt.trending(clks)
        for i, iid in enumerate(item_ids):
            rec = {}
            for w in range(len(self.rt.windows)):
                rec[self._fields[2 * w]] = float(imps[i, w]); rec[self._fields[2 * w + 1]] = float(clks[i, w])
            rec["trending"] = float(trend[i]); rows[iid] = rec
    users = {}
    for uid in user_ids:
        uf = self.rt.user_features(uid, now)
        base_n, base_hist = self.base_user(uid)
        hist = (list(base_hist) + list(uf.recent_clicks))[-self.history_len:]
        rec = {"n_clicks": float(base_n + uf.n_clicks)}
        rec.update({f"c{k}": lio.item_hash(iid) for k, iid in enumerate(hist)})
        rec.update({f"aff:{c}": float(v) for c, v in uf.category_affinity.items()})
        users[uid] = rec
    return rows, users

def run(arm):
    if arm == "before":
        parts.partition_roots, lio.StorePublisher.apply, lio.StorePublisher.records = old_roots, old_apply, old_records
        bs = 8192
    else:
        parts.partition_roots, lio.StorePublisher.apply, lio.StorePublisher.records = new_roots, new_apply, new_records
        bs = 1024
    live = LiveFeatures(MemoryStore(), RealtimeFeatures())
    ids = [f"i{k}" for k in range(N_ITEMS)]
    snap = OnlineSnapshot(user_ids=np.array(["u0"]), histories=np.array([[-1]]), user_clicks=np.array([0]),
                          item_impressions=np.zeros(N_ITEMS), item_clicks=np.zeros(N_ITEMS))
    binding = live.bind(snap, ids, ["c%d" % (k % 20) for k in range(N_ITEMS)])
    binding.cached_at[:] = 0.0
    shutil.rmtree(root, ignore_errors=True)
    logs = {p: EventLog(root / p) for p in ("w0", "w1")}
    src = PartitionedLog(root, own={"w0": logs["w0"]})  # worker 0: its own partition through its writer
    cons = LogConsumer(src, live.publisher, None, batch_size=bs)
    n, dt = 0, 0.0
    for k in range(0, len(REQS), 2 * PER_POLL):
        for p, evs in REQS[k:k + 2 * PER_POLL]:
            logs[p].append(evs)
        t0 = time.process_time()
        n += cons.poll()
        dt += time.process_time() - t0
    src.close()
    for lg in logs.values(): lg.close()
    return n, dt

res = {"before": [], "after": []}
for r in range(rounds):
    for arm in ("before", "after") if r % 2 == 0 else ("after", "before"):
        n, dt = run(arm)
        res[arm].append(1e6 * dt / n)
        print(f"round {r} {arm:6s} events {n} cpu {dt:.3f}s  {1e6*dt/n:.2f} us/event", flush=True)
for arm, v in res.items():
    print(f"{arm}: min {min(v):.2f} us/event, all {[round(x, 2) for x in v]}")
