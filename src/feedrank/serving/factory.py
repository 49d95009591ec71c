"""Assemble a serving process: load a bundle (or a registry's current version), build
the Recommender, open the event log, create the app. Used by `feedrank serve`, the demo,
the benchmarks and the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from feedrank.config import FeedrankConfig, apply_overrides, config_from_dict, config_to_dict, load_config
from feedrank.data.eventlog import EventLog
from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.recommender import Recommender
from feedrank.serving.app import create_app

RUNTIME_SECTIONS = ("pipeline", "rerank", "serving")


def effective_config(bundle_cfg: FeedrankConfig, config_path: str | None = None, overrides: tuple[str, ...] = ()) -> FeedrankConfig:
    """The bundle's config, with a file's runtime sections and dotted overrides on top."""
    if not config_path and not overrides:
        return bundle_cfg
    base = config_to_dict(bundle_cfg)
    if config_path:
        file_cfg = config_to_dict(load_config(config_path, ()))
        for section in RUNTIME_SECTIONS:
            base[section] = file_cfg[section]
    return config_from_dict(apply_overrides(base, list(overrides)))


def load_recommender(model_dir: str | Path, config_path: str | None = None, overrides: tuple[str, ...] = ()) -> Recommender:
    """Load, verify and warm up one bundle."""
    art = load_artifacts(model_dir)
    cfg = effective_config(art.cfg, config_path, overrides)
    torch.set_num_threads(cfg.serving.torch_threads)
    return Recommender(art, cfg)


def with_experiments(service, cfg: FeedrankConfig, load_version=None):
    """Wrap ``service`` in an ExperimentRouter when ``serving.experiments_file`` is set."""
    if not cfg.serving.experiments_file:
        return service
    from feedrank.serving.experiments import ExperimentRouter

    return ExperimentRouter(service, cfg.serving.experiments_file, load_version)


def build_service(model_dir: str, events_dir: str | None, config_path: str | None = None, overrides: tuple[str, ...] = ()):
    """Serve one fixed bundle. Returns (app, event_log, recommender, effective config);
    the caller closes the log."""
    recommender = load_recommender(model_dir, config_path, overrides)
    cfg = recommender.cfg
    event_log = EventLog(Path(events_dir or cfg.serving.events_dir or (Path(model_dir).parent / "events")))
    app = create_app(with_experiments(recommender, cfg), event_log, cfg.serving, cfg.pipeline)
    return app, event_log, recommender, cfg


def build_registry_service(registry_dir: str, events_dir: str | None, config_path: str | None = None,
                           overrides: tuple[str, ...] = (), poll_s: float = 5.0):
    """Serve a registry's ``current`` version and hot-swap when it changes.

    Returns (app, event_log, manager, effective config of the first version). The app's
    shutdown does not stop the manager: call ``manager.stop()``."""
    from prometheus_client import CollectorRegistry

    from feedrank.registry.store import ModelRegistry
    from feedrank.serving.manager import ModelManager

    metrics_registry = CollectorRegistry()
    manager = ModelManager(ModelRegistry(registry_dir, create=False),
                           build=lambda path: load_recommender(path, config_path, overrides),
                           poll_s=poll_s, metrics_registry=metrics_registry)
    cfg = manager.active.cfg
    event_log = EventLog(Path(events_dir or cfg.serving.events_dir or (Path(registry_dir) / "events")))
    service = with_experiments(manager, cfg,
                               load_version=lambda v: load_recommender(manager.registry.path(v), config_path, overrides))
    app = create_app(service, event_log, cfg.serving, cfg.pipeline, registry=metrics_registry)
    return app, event_log, manager, cfg
