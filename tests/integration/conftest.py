"""Two small trained bundles shared by the hot-swap and fault tests (trained once per session),
a tiny world for the training tests, and a two-worker `feedrank serve` on the first bundle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from feedrank.cli.main import cli
from feedrank.config import load_config
from feedrank.data.synth import WorldConfig, generate_world
from feedrank.pipeline.build import train_model
from feedrank.serving.serve_process import ServeProcess, start_serve

SWAP_NOW = float(int(time.time() // 3600 * 3600))


@pytest.fixture(scope="session")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("swap")
    world = root / "world"
    generate_world(world, WorldConfig(n_users=600, n_items=200, n_days=3, seed=5, start=SWAP_NOW - 3 * 86400, activity_mean=1.0),
                   progress=False)
    out = []
    for seed in (1, 2):
        cfg = load_config(None, ["retrieval.epochs=1", "ranking.epochs=1", f"training.seed={seed}"])
        train_model(world, root / f"m{seed}", cfg, show_progress=False, say=lambda m: None)
        out.append(root / f"m{seed}")
    return out[0], out[1]


@pytest.fixture()
def two_workers(two_models, tmp_path: Path) -> Iterator[ServeProcess]:
    """`feedrank serve --workers 2` on the first of `two_models`, events under
    ``tmp_path/events`` (partitions w0 and w1), stderr in ``tmp_path/serve.err``."""
    # with the per-request hand-off on (off by default), so that its two-process paths run here
    # too, and a consumer per worker (the node consumer, the default: test_node_consumer.py)
    with start_serve(two_models[0], workers=2, events_dir=tmp_path / "events", errlog=tmp_path / "serve.err",
                     overrides=("serving.offload=true", "features.consumer=worker")) as srv:
        yield srv


@pytest.fixture(scope="session")
def tiny_train_world(tmp_path_factory) -> Path:
    """A tiny synthetic world (600 users, 300 items, 3 days) made by `feedrank data synth`,
    shared by the training tests (resume, data-parallel); they only read it."""
    out = tmp_path_factory.mktemp("train-world") / "world"
    r = CliRunner().invoke(cli, ["data", "synth", "--out", str(out), "--users", "600", "--items", "300", "--days", "3",
                                 "--seed", "1", "--activity", "1.0", "--no-progress"])
    assert r.exit_code == 0, r.output
    return out
