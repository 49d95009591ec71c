"""Shared fixtures. Tests that read ../shared/data fail (not skip) when CI is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEEDRANK_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets in ../shared/data (read in place, never copied)."""
    if not SHARED_DATA.is_dir():
        msg = f"real data not found at {SHARED_DATA} (set FEEDRANK_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA
