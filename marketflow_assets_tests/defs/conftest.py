"""Fixtures of the Dagster-object tests: real Postgres, local Spark, a fresh data dir, and the
checks' Definitions with test resources (data helpers live in ``checks_data.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from marketflow_assets.definitions import build_resources
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets_tests.defs import checks_data as _checks_data


@pytest.fixture
def asset_resources(pg_clean, data_dir, spark):
    """Resources on the empty test Postgres, the test data dir and the shared Spark session."""
    return build_resources(pg_clean, str(data_dir))


@pytest.fixture
def raw_dir(data_dir) -> Path:
    return data_dir / "raw_prices"


@pytest.fixture(scope="session")
def checks_data():
    """``marketflow_assets_tests/defs/checks_data.py`` (real Parquet / table writers)."""
    return _checks_data


@pytest.fixture
def no_pacing(monkeypatch):
    """Sensor tests tick in quick succession: no alert cooldown, no start-up grace (both are
    tested apart, in ``defs/monitoring/test_alert_pacing.py``). Sensor test modules use it with
    ``pytestmark = pytest.mark.usefixtures("no_pacing")``."""
    monkeypatch.setenv("MARKETFLOW_ALERT_COOLDOWN_SECONDS", "0")
    monkeypatch.setenv("MARKETFLOW_ALERT_STARTUP_GRACE_SECONDS", "0")


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def resources(pg_clean, data_dir) -> dict:
    """The resources the checks and sensors need, pointing at the test Postgres and data dir."""
    return {
        "postgres": PostgresResource(url=pg_clean),
        "raw_data": RawDataResource(data_dir=str(data_dir)),
    }


@pytest.fixture
def check_defs(resources) -> dg.Definitions:
    """The checks' Definitions with the three asset keys declared and the test resources."""
    return _checks_data.checks_defs(resources)


@pytest.fixture
def sensor_defs(resources) -> dg.Definitions:
    return _checks_data.checks_defs(resources)
