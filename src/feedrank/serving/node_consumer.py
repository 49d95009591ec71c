"""One live-features consumer per node (``features.consumer = node``), for a server of
several workers.

    feedrank serve --model var/model --workers 2 features.consumer=node
    # the supervisor runs beside its workers:  python -m feedrank.serving.node_consumer
    # (the serve command's spec in $FEEDRANK_SERVE_SPEC, as the workers read it)

With ``features.consumer = worker`` every worker runs its own consumer thread over every
worker's event partition: the node reads, decodes and applies each
event once per worker, and a worker's consumer holds that worker's GIL while its requests
wait (benchmarks/README.md, round 8: ~13% of a worker's GIL samples at 300 rps). Here one
process does it once and publishes into a shared-memory mirror (features/mirror.py) that
the workers read with a few vectorised lookups and no consumer thread.

What the process does:

* loads the served bundle's light parts (config, item ids and categories, the training
  snapshot of users' clicks and histories; not the towers or the index), and with a
  registry follows its ``current`` version;
* tails every worker's partition of the embedded event log (``data.partitions``) into
  ``RealtimeFeatures`` and publishes each batch's items and clicking users into the mirror
  (``StorePublisher``), with a checkpoint of state and offsets in
  ``<events>/consumers/node-realtime.npz`` (a restart resumes and republishes);
* follows the item logs (``items.jsonl`` of every partition) for the categories of items
  posted while serving;
* publishes the hot items (most clicked in the middle window) and its counters each
  second.

The supervisor (``serving.server.serve_workers``) starts it, restarts it when it dies
(workers serve their defaults meanwhile: a missing or stale mirror is a degraded read,
never an error) and stops it with the server. It applies only with the embedded event log
and the in-process store (``memory://``); with a shared store or event stream the workers
keep their own consumers (``wants_node_consumer``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("feedrank.serving.node")

HOT_ITEMS = 1000        # hot items published (the trending source asks for far fewer)
PUBLISH_EVERY_S = 1.0   # hot list and counters
NOT_USED = 3            # exit status: this configuration has no node consumer (not restarted)
SHM_MIN_FREE = 2 << 30  # /dev/shm must have this much free for the mirror (1.1 GiB at the defaults)


def wants_node_consumer(cfg) -> bool:
    """True when ``cfg`` asks for the node consumer and it applies (live features on, the
    embedded event log, the in-process store)."""
    f = cfg.features
    return bool(f.live and f.consumer == "node" and not cfg.serving.events_url and f.store_url.startswith("memory://"))


def mirror_path_for(claims_dir: str | Path, need_bytes: int = SHM_MIN_FREE) -> str:
    """The mirror file of a server run: in ``/dev/shm`` (tmpfs) when it is writable and has
    ``need_bytes`` free (a container's default 64 MiB does not: writing past it would kill
    the writer with SIGBUS), else in the run's claims folder (a file the page cache keeps)."""
    shm = Path("/dev/shm")
    base = Path(claims_dir)
    try:
        if shm.is_dir() and os.access(shm, os.W_OK):
            st = os.statvfs(shm)
            if st.f_bavail * st.f_frsize >= need_bytes:
                base = shm
    except OSError:
        pass
    return str(base / f"feedrank-{Path(claims_dir).name}" / "features.mirror")


def adopt_freshest_checkpoint(events_root: Path, checkpoint: Path) -> Path | None:
    """Start from the newest consumer checkpoint of the node: the node consumer's own, or
    a worker consumer's (``<events>/w<N>/consumers/realtime.npz``: each worker's consumer
    reads every partition, so its state and offsets cover the node, in the same format),
    copied over the node's. A server switched from per-worker consumers (or back after
    running with them) then reads only what it has not applied, not the whole log.
    Returns the checkpoint adopted, None when the node's own is the newest (or none exists)."""
    import shutil

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return float("-inf")

    workers = sorted(events_root.glob("w*/consumers/realtime.npz"), key=mtime)
    if not workers or mtime(workers[-1]) <= mtime(checkpoint):
        return None
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint.with_name(checkpoint.name + ".adopt.tmp")
    shutil.copyfile(workers[-1], tmp)
    os.replace(tmp, checkpoint)
    log.info("node consumer: resuming from %s, the newest consumer checkpoint of the node", workers[-1])
    return workers[-1]


class _Categories:
    """The ``service`` an ``ItemSync`` indexes posted items into: here only their categories."""

    def __init__(self, cats: dict[str, str]) -> None:
        self.cats = cats

    def add_items(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            self.cats[str(r["item_id"])] = str(r.get("category", ""))


def spec_config(spec: dict[str, Any]):
    """(effective config, bundle folder, registry version or None) of the serve command's
    ``spec``: the bundle's config with the command's file and overrides on top, as the
    workers build it (serving/factory.py), read without loading the model."""
    from feedrank.config import config_from_dict
    from feedrank.registry.bundle import open_bundle
    from feedrank.serving.factory import effective_config

    version = None
    if spec.get("registry_dir"):
        from feedrank.registry.store import ModelRegistry

        registry = ModelRegistry(spec["registry_dir"], create=False)
        version = registry.current()
        if version is None:
            raise RuntimeError(f"registry {spec['registry_dir']} has no current version")
        model = registry.path(version)
    else:
        model = Path(spec["model_dir"])
    manifest = open_bundle(model, verify=False)
    bundle_cfg = config_from_dict(json.loads(manifest.path("config.json").read_text()))
    return effective_config(bundle_cfg, spec.get("config_path"), tuple(spec.get("overrides") or ())), model, version


class NodeConsumer:
    """The process's work (module docstring); ``run(stop)`` until ``stop`` is set."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.cfg, model, self.version = spec_config(spec)
        self.registry = None
        if spec.get("registry_dir"):
            from feedrank.registry.store import ModelRegistry

            self.registry = ModelRegistry(spec["registry_dir"], create=False)
        if spec.get("registry_dir"):
            default_root = Path(spec["registry_dir"]) / "events"
        else:
            default_root = Path(spec["model_dir"]).parent / "events"
        self.events_root = Path(spec.get("events_dir") or self.cfg.serving.events_dir or default_root)
        from feedrank.features.realtime import build_realtime

        fc = self.cfg.features
        self.rt = build_realtime(fc, history_len=self.cfg.retrieval.history_len, prior_weight=self.cfg.ranking.ctr_prior)
        self.writer = None
        self.cats: dict[str, str] = {}
        # (item ids, user -> (clicks, history rows)) of the bound model, swapped as one object
        self._bound: tuple[list[str], dict[str, tuple[int, np.ndarray]]] = ([], {})
        self._failed: int | None = None  # a registry version whose bind failed (logged once)
        self.bind(model)
        self.consumer = None
        self.publisher = None

    # ------------------------------------------------------------------ the model
    def bind(self, model: Path) -> None:
        """Item categories and users' training state of the bundle at ``model`` (the
        towers and the index are not loaded)."""
        import pyarrow.parquet as pq

        from feedrank.registry.bundle import open_bundle

        manifest = open_bundle(model, verify=False)
        tbl = pq.read_table(manifest.path("items.parquet"), columns=["item_id", "category"])
        ids = [str(i) for i in tbl.column("item_id").to_pylist()]
        cats = {**self.cats, **dict(zip(ids, (str(c) for c in tbl.column("category").to_pylist())))}
        with np.load(manifest.path("state.npz"), allow_pickle=False) as z:
            users = {str(u): (int(n), h) for u, n, h in zip(z["user_ids"].tolist(), z["user_clicks"].tolist(), z["histories"])}
        self.cats, self._bound = cats, (ids, users)
        self.rt._category = self.cats.get
        if hasattr(self, "sync"):
            self.sync.service.cats = self.cats
        log.info("node consumer: bound to %s (%d items, %d users)", model, len(ids), len(users))

    def _base_user(self, user_id: str) -> tuple[int, list[str]]:
        ids, users = self._bound
        b = users.get(user_id)
        if b is None:
            return 0, []
        return b[0], [ids[r] for r in b[1].tolist() if 0 <= r < len(ids)]

    def _follow_registry(self) -> None:
        if self.registry is None:
            return
        v = self.registry.current()
        if v is not None and v != self.version:
            try:
                self.bind(self.registry.path(v))
            except Exception as exc:  # tried again next round (the old model's state serves meanwhile)
                if self._failed != v:
                    log.error("node consumer: could not bind registry version %s (%s: %s); retrying every %.0f s",
                              v, type(exc).__name__, exc, PUBLISH_EVERY_S)
                self._failed = v
                return
            self.version = v  # after the bind: one that failed is tried again next round

    # ------------------------------------------------------------------ the stream
    def start(self, stop: threading.Event) -> bool:
        """Open the event log (waiting for the workers to create it) and start consuming;
        False when ``stop`` was set first."""
        from feedrank.data.partitions import PartitionedLog
        from feedrank.features.consumer import LogConsumer, open_consumer
        from feedrank.features.live_io import StorePublisher, window_fields
        from feedrank.serving.app import item_log_paths
        from feedrank.serving.item_sync import ItemSync

        # the mirror first: until the log is open and read, workers see a stalled stream
        # (baselines), not a missing mirror (defaults)
        fc = self.cfg.features
        self.writer = self._create_mirror(window_fields(self.rt.windows))
        if not self.events_root.is_dir():
            log.info("node consumer: waiting for the workers to create %s", self.events_root)
        while not self.events_root.is_dir():
            if stop.wait(0.2):
                return False
        source = PartitionedLog(self.events_root)
        t0 = time.monotonic()
        n = source.open_readers()
        log.info("node consumer: %d partition readers opened in %.1f s", n, time.monotonic() - t0)
        self.publisher = StorePublisher(self.rt, self.writer, self.cfg.retrieval.history_len, base_user=self._base_user)
        checkpoint = self.events_root / "consumers" / "node-realtime.npz"
        adopt_freshest_checkpoint(self.events_root, checkpoint)

        def consumer() -> LogConsumer:
            return LogConsumer(source, self.publisher, checkpoint, commit_every_s=fc.commit_every_s, name="node",
                               batch_size=1024)

        self.consumer = open_consumer(consumer, checkpoint)
        if self.consumer.resumed:  # a fresh mirror needs the resumed state, then a heartbeat
            self.writer.hold_heartbeat = True
            try:
                self.publisher.republish()
            finally:
                self.writer.hold_heartbeat = False
            self.writer.heartbeat(time.time(), self.publisher.stream_now)
        self.sync = ItemSync(_Categories(self.cats), lambda: item_log_paths(self.events_root, ""))
        self.sync.replay()
        self.consumer.start(fc.poll_s)
        log.info("node consumer: consuming %s into %s (pid %d)", self.events_root, self.writer.url, os.getpid())
        return True

    def _create_mirror(self, names: tuple[str, ...]):
        """The mirror at the spec's path; where that file system (``/dev/shm``) has less room
        than the file's full size, in the run's claims folder behind a link at that path."""
        from feedrank.features.mirror import MirrorWriter

        fc = self.cfg.features
        path = Path(self.spec["mirror_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        need = MirrorWriter.bytes_needed(len(names), fc.max_items, fc.max_users, fc.mirror_user_fields)
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize >= need or not self.spec.get("claims_dir"):
            return MirrorWriter.create(path, names, max_items=fc.max_items, max_users=fc.max_users,
                                       user_fields=fc.mirror_user_fields)
        target = Path(self.spec["claims_dir"]) / "node-mirror" / "features.mirror"
        log.warning("node consumer: %s has %.1f GiB free, the mirror needs up to %.1f GiB: writing it to %s",
                    path.parent, st.f_bavail * st.f_frsize / 2**30, need / 2**30, target)
        writer = MirrorWriter.create(target, names, max_items=fc.max_items, max_users=fc.max_users,
                                     user_fields=fc.mirror_user_fields)
        link = path.with_name(f".{path.name}.link.tmp")
        link.unlink(missing_ok=True)
        os.symlink(target, link)
        os.replace(link, path)  # readers map the target: its inode changes with each new file
        return writer

    def hot_items(self, k: int = HOT_ITEMS) -> list[str]:
        from feedrank.features.live import hot_item_ids

        stream_now = self.publisher.stream_now if self.publisher is not None else -np.inf
        return hot_item_ids(self.rt, stream_now, time.time(), k)

    def publish_state(self) -> None:
        if self.writer is None:
            return
        self.writer.set_hot(self.hot_items())
        c = self.consumer
        if c is not None:
            self.writer.set_stats(c.applied, c.errors, self.publisher.publish_errors if self.publisher else 0)

    def run(self, stop: threading.Event) -> None:
        if not self.start(stop):
            return
        item_every = max(0.05, self.cfg.serving.item_sync_s)
        next_items = time.monotonic() + item_every
        while not stop.wait(PUBLISH_EVERY_S):
            try:
                self.publish_state()
                if time.monotonic() >= next_items:
                    next_items = time.monotonic() + item_every
                    self.sync.poll()
                self._follow_registry()
            except Exception:  # keep consuming; the next round retries
                log.exception("node consumer: periodic work failed")

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()  # commits
            self.consumer = None
        if self.writer is not None:
            self.writer.close()


class NodeKeeper:
    """The supervisor's side: runs ``python -m feedrank.serving.node_consumer`` with the
    workers' environment and starts it again whenever it exits (a crash, a kill, a SIGTERM
    sent to it alone), after ``restart_s`` doubling up to 30 s while it keeps dying within
    a minute; only ``NOT_USED`` (this configuration has no node consumer) or ``stop`` end it."""

    def __init__(self, env: dict[str, str], restart_s: float = 1.0, argv: list[str] | None = None) -> None:
        from feedrank.serving.workers import MULTIPROC_ENV

        self.env = {k: v for k, v in env.items() if k != MULTIPROC_ENV}  # it serves no metrics of its own
        self.argv = argv or [sys.executable, "-m", "feedrank.serving.node_consumer"]
        self.restart_s = float(restart_s)
        self.proc = None
        self.starts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._keep, name="node-consumer-keeper", daemon=True)

    def start(self) -> "NodeKeeper":
        self._thread.start()
        return self

    def _keep(self) -> None:
        import subprocess

        wait = self.restart_s
        while True:
            with self._lock:  # stop() either sees this process or prevents it
                if self._stop.is_set():
                    return
                self.starts += 1
                self.proc = subprocess.Popen(self.argv, env=self.env)
            t0 = time.monotonic()
            log.info("node consumer started (pid %d)", self.proc.pid)
            rc = self.proc.wait()
            if rc == NOT_USED or self._stop.is_set():
                return
            wait = self.restart_s if time.monotonic() - t0 > 60 else min(30.0, wait * 2 if self.starts > 1 else wait)
            if self._stop.wait(wait):  # the server is stopping (its signal reached the consumer first)
                return
            log.error("node consumer (pid %d) exited with status %d %.0f s ago; starting it again (the workers served "
                      "baselines or defaults meanwhile)", self.proc.pid, rc, wait)

    def stop(self, timeout_s: float = 15.0) -> None:
        with self._lock:
            self._stop.set()
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout_s)
            except Exception:
                p.kill()
        self._thread.join(timeout_s)


def _die_with_parent() -> None:
    """Linux: SIGTERM when the supervisor dies (even by SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> int:
    from feedrank.serving.workers import SPEC_ENV

    spec = json.loads(os.environ[SPEC_ENV])
    logging.basicConfig(level=str(spec.get("log_level", "info")).upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _die_with_parent()
    parent = os.getppid()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cfg = spec_config(spec)[0]
    if not wants_node_consumer(cfg):  # decided before the bundle's users and items are loaded
        log.info("node consumer: not used by this configuration (features.consumer=%s); exiting", cfg.features.consumer)
        return NOT_USED
    node = NodeConsumer(spec)

    def watch_parent() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.warning("node consumer: the server supervisor is gone; stopping")
                stop.set()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    try:
        node.run(stop)
    finally:
        node.close()
        if os.getppid() != parent:  # the supervisor died without its clean-up: the mirror goes with us
            import shutil

            shutil.rmtree(Path(spec["mirror_path"]).parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
