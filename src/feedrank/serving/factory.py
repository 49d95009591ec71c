"""Assemble a serving process: load a bundle (or a registry's current version), build
the Recommender, open the event log, create the app. Used by `feedrank serve`, the demo,
the benchmarks and the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from feedrank.config import FeedrankConfig, apply_overrides, config_from_dict, config_to_dict, load_config
from feedrank.data.streams import open_event_log
from feedrank.pipeline.artifacts import load_artifacts
from feedrank.pipeline.recommender import Recommender
from feedrank.serving.app import create_app

RUNTIME_SECTIONS = ("pipeline", "rerank", "serving", "features")


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


def build_service(model_dir: str, events_dir: str | None, config_path: str | None = None, overrides: tuple[str, ...] = (),
                  partition: str = "", mirror_path: str | None = None):
    """Serve one fixed bundle. Returns (app, event_log, recommender, effective config);
    the caller closes the log. ``partition``: this worker's sub-folder of the embedded event
    log (serving/workers.py), "" for a single process. ``mirror_path``: the node consumer's
    mirror of the live features, used when the config asks for it (``features.consumer``)."""
    from feedrank.serving.live_features import build_live, load_model_baselines
    from feedrank.serving.node_consumer import wants_node_consumer

    recommender = load_recommender(model_dir, config_path, overrides)
    cfg = recommender.cfg
    event_log = open_event_log(cfg.serving.events_url, Path(events_dir or cfg.serving.events_dir or (Path(model_dir).parent / "events")) / partition)
    live = build_live(cfg, mirror_path if mirror_path and wants_node_consumer(cfg) else None)
    if live is not None:
        recommender.attach_live(live)
        load_model_baselines(live, recommender.art)
    app = create_app(with_experiments(recommender, cfg), event_log, cfg.serving, cfg.pipeline, live=live, partition=partition)
    return app, event_log, recommender, cfg


def build_registry_service(registry_dir: str, events_dir: str | None, config_path: str | None = None,
                           overrides: tuple[str, ...] = (), poll_s: float = 5.0, partition: str = "",
                           mirror_path: str | None = None):
    """Serve a registry's ``current`` version and hot-swap when it changes.

    Returns (app, event_log, manager, effective config of the first version). The app's
    shutdown does not stop the manager: call ``manager.stop()``."""
    from prometheus_client import CollectorRegistry

    from feedrank.registry.store import ModelRegistry
    from feedrank.serving.manager import ModelManager

    from feedrank.serving.live_features import build_live, load_model_baselines
    from feedrank.serving.node_consumer import wants_node_consumer

    metrics_registry = CollectorRegistry()
    live_box: list = []  # one LiveFeatures for the process, built with the first version's config

    def build(path):
        rec = load_recommender(path, config_path, overrides)
        if not live_box:
            live_box.append(build_live(rec.cfg, mirror_path if mirror_path and wants_node_consumer(rec.cfg) else None))
        if live_box[0] is not None:
            rec.attach_live(live_box[0])
            load_model_baselines(live_box[0], rec.art)
        return rec

    manager = ModelManager(ModelRegistry(registry_dir, create=False), build=build,
                           poll_s=poll_s, metrics_registry=metrics_registry)
    cfg = manager.active.cfg
    event_log = open_event_log(cfg.serving.events_url, Path(events_dir or cfg.serving.events_dir or (Path(registry_dir) / "events")) / partition)
    service = with_experiments(manager, cfg, load_version=lambda v: build(manager.registry.path(v)))
    app = create_app(service, event_log, cfg.serving, cfg.pipeline, registry=metrics_registry,
                     live=live_box[0] if live_box else None, partition=partition)
    return app, event_log, manager, cfg
