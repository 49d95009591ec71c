"""`feedrank serve`: the HTTP feed service over a model bundle."""

from __future__ import annotations

from pathlib import Path

import click

from feedrank.cli.common import config_options, resolve_config, say


def build_service(model_dir: str, events_dir: str | None, config_path: str | None = None, overrides: tuple[str, ...] = ()):
    """Load the model and open the event log; returns (app, event_log, recommender)."""
    from feedrank.config import apply_overrides, config_from_dict, config_to_dict
    from feedrank.data.eventlog import EventLog
    from feedrank.pipeline.artifacts import load_artifacts
    from feedrank.pipeline.recommender import Recommender
    from feedrank.serving.app import create_app

    art = load_artifacts(model_dir)
    cfg = art.cfg
    if config_path or overrides:
        # the bundle's config is the base; a file's runtime sections and the overrides go on top
        base = config_to_dict(cfg)
        if config_path:
            file_cfg = config_to_dict(resolve_config(config_path, ()))
            for section in ("pipeline", "rerank", "serving"):
                base[section] = file_cfg[section]
        cfg = config_from_dict(apply_overrides(base, list(overrides)))
    recommender = Recommender(art, cfg)
    log_dir = Path(events_dir or cfg.serving.events_dir or (Path(model_dir).parent / "events"))
    event_log = EventLog(log_dir)
    app = create_app(recommender, event_log, cfg.serving, cfg.pipeline)
    return app, event_log, recommender, cfg


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
