"""Run an app under uvicorn with JSON logging."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from feedrank.serving.logs import log_config


def serve_forever(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` until SIGINT/SIGTERM (blocks). One process; the app's lifespan
    flushes the impression writer on shutdown.

    Note: after a graceful shutdown on SIGTERM, uvicorn re-raises the signal, so code
    after this call does not run then. Nothing is lost: every append is already fsync'd
    and the event log's directory lock is released by the kernel. Put cleanup that must
    run in the app's lifespan, not after ``serve_forever``.
    """
    uvicorn.run(app, **_uvicorn_kwargs(host, port, log_level))


def _uvicorn_kwargs(host: str, port: int, log_level: str) -> dict:
    # uvicorn formats each request's access-log arguments (client address, quoted path) before
    # the logger's level check: above "info" nothing would be written, so it is off there
    return {"host": host, "port": port, "log_config": log_config(log_level), "log_level": log_level,
            "access_log": log_level in ("debug", "info"), "timeout_graceful_shutdown": 10}


def serve_workers(spec: dict, workers: int, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve with ``workers`` processes on one port (blocks until SIGINT/SIGTERM). Each
    worker builds its own app from ``spec`` (the serve command's arguments: model_dir or
    registry_dir, events_dir, config_path, overrides, poll_s); see serving/workers.py."""
    import os

    from feedrank.serving.workers import write_spec

    from feedrank.serving.balance import run_supervisor

    from feedrank.serving.node_consumer import NodeKeeper

    os.environ.update(write_spec(workers=workers, log_level=log_level, **spec))  # the spawned workers read it
    # features.consumer=node: one consumer process for the node (it exits at once when not configured)
    node = NodeKeeper(dict(os.environ)).start() if workers > 1 else None
    config = uvicorn.Config(
        "feedrank.serving.workers:create_worker_app",
        factory=True,
        workers=workers,
        # a worker loading a large bundle (or on a busy machine) answers the supervisor's
        # ping late; the default 5 s kills and restarts it forever
        timeout_worker_healthcheck=120,
        **_uvicorn_kwargs(host, port, log_level),
    )
    sock = config.bind_socket()  # once, here; every worker accepts on it (serving/balance.py decides which)
    try:
        run_supervisor(config, [sock])
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """uvicorn in a thread, for the demo and tests; ``stop()`` shuts it down cleanly."""

    def __init__(self, app, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="feedrank-server", daemon=True)
        self.url = f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > timeout:
                raise RuntimeError(f"server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
