"""Fixtures of the sensor tests: the checks' data helpers and Definitions with test resources."""

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from marketflow_assets import checks
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource

_CHECKS_DATA = Path(__file__).resolve().parents[1] / "checks" / "checks_data.py"


@pytest.fixture(scope="session")
def checks_data():
    """``marketflow_assets_tests/checks/checks_data.py`` (real Parquet / table writers)."""
    spec = importlib.util.spec_from_file_location("marketflow_checks_data", _CHECKS_DATA)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    return dg.Definitions.merge(
        checks.defs, dg.Definitions(assets=checks_data.STUB_ASSETS, resources=resources)
    )
