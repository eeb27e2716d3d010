"""Fixtures of the Spark streaming tests (helpers live in streaming_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def job_cwd(tmp_path) -> Path:
    """An empty working directory (no stray .env) for job subprocesses."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path
