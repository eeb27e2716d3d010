"""Fixtures of the Spark streaming tests (helpers live in streaming_helpers.py).

This test package is called ``streaming``, not ``spark_streaming``, so it never shadows the job's
own ``spark_streaming`` package.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def job_cwd(tmp_path) -> Path:
    """An empty working directory (no stray .env) for job subprocesses."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path
