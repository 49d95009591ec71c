"""Assemble a serving process: load a bundle, build the Recommender, open the event log,
create the app. Used by `feedrank serve`, the demo and the benchmarks."""

from __future__ import annotations

from pathlib import Path


def build_service(model_dir: str, events_dir: str | None, config_path: str | None = None, overrides: tuple[str, ...] = ()):
    """Load the model and open the event log.

    Returns (app, event_log, recommender, effective config). The caller closes the log."""
    from feedrank.config import apply_overrides, config_from_dict, config_to_dict, load_config
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
            file_cfg = config_to_dict(load_config(config_path, ()))
            for section in ("pipeline", "rerank", "serving"):
                base[section] = file_cfg[section]
        cfg = config_from_dict(apply_overrides(base, list(overrides)))
    import torch

    torch.set_num_threads(cfg.serving.torch_threads)
    recommender = Recommender(art, cfg)
    log_dir = Path(events_dir or cfg.serving.events_dir or (Path(model_dir).parent / "events"))
    event_log = EventLog(log_dir)
    app = create_app(recommender, event_log, cfg.serving, cfg.pipeline)
    return app, event_log, recommender, cfg
