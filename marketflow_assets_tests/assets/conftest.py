"""Fixtures for the asset tests: real Postgres, local Spark, a fresh data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketflow_assets.definitions import build_resources


@pytest.fixture
def asset_resources(pg_clean, data_dir, spark):
    """Resources on the empty test Postgres, the test data dir and the shared Spark session."""
    return build_resources(pg_clean, str(data_dir))


@pytest.fixture
def raw_dir(data_dir) -> Path:
    return data_dir / "raw_prices"
