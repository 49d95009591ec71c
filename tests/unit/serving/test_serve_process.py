"""`serving.serve_process`: bad arguments are refused before anything starts (a server
that exits at start-up: tests/integration/test_serve_process.py; the two-worker start and
stop: tests/integration/test_workers.py and test_item_sync.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedrank.serving.serve_process import start_serve


def test_bad_arguments_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        start_serve(tmp_path, workers=0)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        start_serve(tmp_path / "no-such-model")


def test_access_log_only_where_its_level_is_written():
    from feedrank.serving.server import _uvicorn_kwargs

    assert _uvicorn_kwargs("127.0.0.1", 8000, "info")["access_log"] is True
    assert _uvicorn_kwargs("127.0.0.1", 8000, "debug")["access_log"] is True
    assert _uvicorn_kwargs("127.0.0.1", 8000, "warning")["access_log"] is False
