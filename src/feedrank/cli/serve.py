"""`feedrank serve`: the HTTP feed service over a model bundle."""

from __future__ import annotations

from pathlib import Path

import click

from feedrank.cli.common import config_options, say
from feedrank.serving.factory import build_service


@click.command()
@click.option("--model", "model_dir", default=None, type=click.Path(exists=True, file_okay=False), help="Serve this model bundle folder.")
@click.option("--registry", "registry_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Serve the registry's current version and hot-swap when it changes.")
@click.option("--poll", "poll_s", default=5.0, show_default=True, type=click.FloatRange(0.1), help="With --registry: seconds between checks of `current`.")
@click.option("--host", default=None, help="Bind address (default serving.host, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default serving.port, 8000).")
@click.option("--events-dir", default=None, type=click.Path(file_okay=False), help="Event log folder (default: <model>/../events or <registry>/events).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Server processes on the port, one per core (default serving.workers, 2; 1 = one process).")
@config_options
def serve(model_dir: str | None, registry_dir: str | None, poll_s: float, host: str | None, port: int | None,
          events_dir: str | None, log_level: str, workers: int | None, config_path: str | None,
          overrides: tuple[str, ...]) -> None:
    """Serve feeds over HTTP: GET /v1/feed, POST /v1/events, /metrics, /docs.

    Give either --model (one fixed bundle) or --registry (the current version, swapped
    without a restart when `feedrank models promote|rollback` moves it).

    \b
    Examples:
      feedrank serve --model var/model
      feedrank serve --registry var/registry --poll 2
      feedrank serve --model var/model --port 8080 pipeline.deadline_ms=100
      feedrank serve --model var/model --workers 4     # one process per core (default 2)
      feedrank serve --model var/model --workers 1     # a single process
      curl http://127.0.0.1:8000/metrics                # summed over every worker
      curl 'http://127.0.0.1:8000/v1/feed?user_id=u1&k=10'
    """
    from feedrank.serving.factory import build_registry_service
    from feedrank.serving.server import serve_forever, serve_workers

    if (model_dir is None) == (registry_dir is None):
        raise click.UsageError("give exactly one of --model DIR or --registry DIR")
    n_workers = workers if workers is not None else _configured_workers(config_path, overrides)
    if n_workers > 1:
        from feedrank.config import load_config

        cfg = load_config(config_path, list(overrides))
        host = host or cfg.serving.host
        port = port if port is not None else cfg.serving.port
        say(f"starting {n_workers} worker processes on http://{host}:{port} (each loads the model; docs at /docs)")
        serve_workers({"model_dir": model_dir, "registry_dir": registry_dir, "events_dir": events_dir,
                       "config_path": config_path, "overrides": list(overrides), "poll_s": poll_s},
                      n_workers, host, port, log_level=log_level)
        return
    manager = None
    if registry_dir is not None:
        app, event_log, manager, cfg = build_registry_service(registry_dir, events_dir, config_path, overrides, poll_s)
        manager.start()
        version = f"{manager.model_version} (registry version {manager.registry_version})"
    else:
        app, event_log, rec, cfg = build_service(model_dir, events_dir, config_path, overrides)
        version = rec.model_version
    host = host or cfg.serving.host
    port = port if port is not None else cfg.serving.port
    say(f"model {version} loaded; serving on http://{host}:{port} (docs at /docs)")
    try:
        serve_forever(app, host, port, log_level=log_level)
    finally:
        if manager is not None:
            manager.stop()
        event_log.close()


def _configured_workers(config_path: str | None, overrides: tuple[str, ...]) -> int:
    """``serving.workers`` from the config file and overrides (the bundle's own value is not
    read: the process count is a property of the machine, not of the model)."""
    from feedrank.config import load_config

    return load_config(config_path, list(overrides)).serving.workers
