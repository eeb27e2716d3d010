"""Fixtures of the sensor tests: the checks' data helpers and Definitions with test resources."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets_tests.checks import checks_data as _checks_data


@pytest.fixture(scope="session")
def checks_data():
    """``marketflow_assets_tests/checks/checks_data.py`` (real Parquet / table writers)."""
    return _checks_data


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def resources(pg_clean, data_dir) -> dict:
    return {
        "postgres": PostgresResource(url=pg_clean),
        "raw_data": RawDataResource(data_dir=str(data_dir)),
    }


@pytest.fixture
def sensor_defs(resources, checks_data) -> dg.Definitions:
    return checks_data.checks_defs(resources)
