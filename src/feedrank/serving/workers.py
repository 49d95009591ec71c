"""N serving processes on one port (``serving.workers``), one per core.

    feedrank serve --model var/model                 # serving.workers: 2 by default
    feedrank serve --model var/model --workers 4     # or serving.workers=4; 1 = one process

One Python process runs one request's pipeline at a time on one core (the GIL), so a
server on C cores runs C worker processes. uvicorn's supervisor binds the port once,
spawns the workers (each imports ``create_worker_app`` and builds its own app), restarts
a worker that dies, and passes SIGINT/SIGTERM on. A new connection goes to the worker
with the fewest open connections (``serving.balance_connections``, serving/balance.py);
with it off, the kernel hands it to whichever idle worker calls ``accept()`` first, which
splits a client's persistent connections very unevenly.

What each worker owns, and the consistency that gives (docs/api.md, "Workers"):

* **Model**: each worker loads the bundle (memory x N). With ``--registry``, each runs its
  own ``ModelManager`` poller and swaps on its own when ``current`` moves: for up to one
  poll interval the workers may answer with different versions; every response says which.
* **Event log** (embedded): one partition per worker, ``<events_dir>/w<slot>/``, because a
  log directory has one writer (data/partitions.py reads them all). A slot is claimed with an ``flock``, so a
  restarted worker reopens its own partition. Event-id deduplication is per partition: a
  client retry that lands on the other worker is written twice and readers drop the
  repeat by ``event_id``. With ``serving.events_url=redis://...`` all workers share one
  stream instead.
* **Readers** see every worker's events: the real-time counters consume every partition
  (``data.partitions.PartitionedLog``, an offset per partition), by default in one consumer
  process for the node that publishes into shared memory the workers read
  (``features.consumer=node``: serving/node_consumer.py, features/mirror.py; the
  supervisor starts it, restarts it when it dies and stops it), else in each worker; so do
  ``feedrank retrain``, the offline exporter and ``feedrank ab report``.
* **Metrics**: the supervisor creates a fresh folder for prometheus_client's multiprocess
  mode (``PROMETHEUS_MULTIPROC_DIR``; an existing one given in the environment is emptied
  first) before spawning the workers, so ``/metrics`` on any worker is the sum over all
  of them (serving/metrics.py). The folder is removed when the supervisor exits normally (a fresh
  one is made per run in any case).
* **Online state** (recent clicks, seen items): per worker. A client's keep-alive
  connection stays on one worker (a feed another worker computed for it, serving/offload.py,
  is recorded there too), but separate connections of one user may hit either,
  so "never show a seen item again" holds per worker; with ``features.live`` and a shared
  ``features.store_url`` (Redis) history and counters are shared.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from feedrank.errors import FeedrankError

log = logging.getLogger("feedrank.serving")

SPEC_ENV = "FEEDRANK_SERVE_SPEC"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported
_claims: list[int] = []  # slot lock fds, held for the life of the worker process


def claim_slot(claims_dir: str | Path, workers: int) -> int:
    """The lowest free worker slot (0..workers-1), held by an ``flock`` until the process exits."""
    d = Path(claims_dir)
    d.mkdir(parents=True, exist_ok=True)
    for slot in range(max(1, workers)):
        fd = os.open(d / f"worker-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _claims.append(fd)
        return slot
    raise FeedrankError(f"all {workers} worker slots in {d} are taken (is another server using them?)")


def partition_name(slot: int) -> str:
    return f"w{slot}"


def metrics_dir(claims_dir: str | Path) -> Path:
    """The multiprocess metrics folder of a run: ``$PROMETHEUS_MULTIPROC_DIR`` when set
    (emptied of earlier runs' files), else ``<claims_dir>/metrics`` (new, empty)."""
    given = os.environ.get(MULTIPROC_ENV)
    d = Path(given) if given else Path(claims_dir) / "metrics"
    d.mkdir(parents=True, exist_ok=True)
    stale = list(d.glob("*.db"))
    for f in stale:
        f.unlink()
    if stale:
        log.info("removed %d metrics files of an earlier run from %s", len(stale), d)
    return d


def write_spec(**spec: Any) -> dict[str, str]:
    """Environment for the worker processes: the serve command's arguments as JSON, one
    BLAS thread per worker (set before numpy loads in the spawned process), and the
    multiprocess metrics folder (set before prometheus_client loads there). The claims and
    metrics folders made here are removed when this (the supervisor) process exits."""
    if "claims_dir" not in spec:
        spec["claims_dir"] = tempfile.mkdtemp(prefix="feedrank-workers-")
        atexit.register(shutil.rmtree, spec["claims_dir"], True)
    if int(spec.get("workers", 1)) > 1 and "mirror_path" not in spec:  # where a node consumer would publish
        from feedrank.serving.node_consumer import mirror_path_for

        spec["mirror_path"] = mirror_path_for(spec["claims_dir"])
        atexit.register(shutil.rmtree, str(Path(spec["mirror_path"]).parent), True)
    mdir = metrics_dir(spec["claims_dir"])
    return {SPEC_ENV: json.dumps(spec), MULTIPROC_ENV: str(mdir), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


def create_worker_app():
    """uvicorn app factory run in each worker process (reads ``FEEDRANK_SERVE_SPEC``)."""
    from feedrank.serving.factory import build_registry_service, build_service

    spec = json.loads(os.environ[SPEC_ENV])
    slot = claim_slot(spec["claims_dir"], int(spec["workers"]))
    part = partition_name(slot)
    overrides = tuple(spec.get("overrides") or ())
    if spec.get("registry_dir"):
        app, _log, manager, cfg = build_registry_service(spec["registry_dir"], spec.get("events_dir"), spec.get("config_path"),
                                                          overrides, float(spec.get("poll_s", 5.0)), partition=part,
                                                          mirror_path=spec.get("mirror_path"))
        manager.start()
        version = manager.model_version
    else:
        app, _log, rec, cfg = build_service(spec["model_dir"], spec.get("events_dir"), spec.get("config_path"), overrides,
                                             partition=part, mirror_path=spec.get("mirror_path"))
        version = rec.model_version
    if cfg.serving.balance_connections and int(spec["workers"]) > 1:
        from feedrank.serving.balance import attach_board

        attach_board(spec["claims_dir"], int(spec["workers"]), slot)  # serving/balance.py: least-connections accept
    # the hand-off needs the pipeline inline on the loop (no micro-batching thread pool)
    if cfg.serving.offload and int(spec["workers"]) > 1 and cfg.pipeline.rank_batch_wait_ms <= 0:
        from feedrank.serving.offload import attach_offload

        attach_offload(spec["claims_dir"], int(spec["workers"]), slot)  # serving/offload.py: per-request hand-off
    log.info("worker %s (pid %d) serving model %s; event log partition %s", slot, os.getpid(), version, part)
    # Nothing to close after the server stops: every append is fsync'd when it returns, the
    # app's shutdown flushes the impression writer, and the kernel drops the flocks.
    return app
