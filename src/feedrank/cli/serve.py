"""`feedrank serve`: the HTTP feed service over a model bundle."""

from __future__ import annotations

from pathlib import Path

import click

from feedrank.cli.common import config_options, say
from feedrank.serving.factory import build_service


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Model bundle folder.")
@click.option("--host", default=None, help="Bind address (default serving.host, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default serving.port, 8000).")
@click.option("--events-dir", default=None, type=click.Path(file_okay=False), help="Event log folder (default: <model>/../events).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@config_options
def serve(model_dir: str, host: str | None, port: int | None, events_dir: str | None, log_level: str,
          config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Serve feeds over HTTP: GET /v1/feed, POST /v1/events, /metrics, /docs.

    \b
    Examples:
      feedrank serve --model var/model
      feedrank serve --model var/model --port 8080 pipeline.deadline_ms=100
      curl 'http://127.0.0.1:8000/v1/feed?user_id=u1&k=10'
    """
    from feedrank.serving.server import serve_forever

    app, event_log, rec, cfg = build_service(model_dir, events_dir, config_path, overrides)
    host = host or cfg.serving.host
    port = port if port is not None else cfg.serving.port
    say(f"model {rec.model_version} loaded; serving on http://{host}:{port} (docs at /docs)")
    try:
        serve_forever(app, host, port, log_level=log_level)
    finally:
        event_log.close()
