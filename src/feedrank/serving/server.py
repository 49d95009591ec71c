"""Run an app under uvicorn with JSON logging."""

from __future__ import annotations

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
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=log_config(log_level),
        log_level=log_level,
        access_log=True,
        timeout_graceful_shutdown=10,
    )
