"""`serving.serve_process.start_serve`: a `feedrank serve` that exits at start-up is
reported with the end of its stderr, not waited on until the timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedrank.serving.serve_process import start_serve


def test_a_server_that_exits_at_start_is_reported_with_its_stderr(tmp_path: Path):
    errlog = tmp_path / "serve.err"
    with pytest.raises(RuntimeError, match=r"did not become ready \(exit [1-9]") as err:  # exit None: timed out
        start_serve(tmp_path, errlog=errlog, timeout_s=600)  # an empty folder is no model bundle
    tail = errlog.read_text(errors="replace").strip()
    assert tail and tail[-200:] in str(err.value)  # the CLI's error is kept and quoted
