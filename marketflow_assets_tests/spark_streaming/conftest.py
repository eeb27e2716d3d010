"""Fixtures of the Spark streaming tests (helpers live in streaming_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# This test folder is called ``spark_streaming`` like the job's package. pytest puts
# ``marketflow_assets_tests/`` on sys.path, where this folder would shadow the real package as an
# empty namespace package; a regular package anywhere on sys.path wins over that, so make sure the
# repository root is there (and drop a namespace module cached before this conftest ran).
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))
_cached = sys.modules.get("spark_streaming")
if _cached is not None and getattr(_cached, "__file__", None) is None:
    for _name in [
        m for m in sys.modules if m == "spark_streaming" or m.startswith("spark_streaming.")
    ]:
        del sys.modules[_name]


@pytest.fixture
def job_cwd(tmp_path) -> Path:
    """An empty working directory (no stray .env) for job subprocesses."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path
