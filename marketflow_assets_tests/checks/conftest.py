"""Fixtures of the check tests (helpers live in ``checks_data.py``)."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets_tests.checks.checks_data import checks_defs


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def resources(pg_clean, data_dir) -> dict:
    """The resources the checks need, pointing at the test Postgres and data dir."""
    return {
        "postgres": PostgresResource(url=pg_clean),
        "raw_data": RawDataResource(data_dir=str(data_dir)),
    }


@pytest.fixture
def check_defs(resources) -> dg.Definitions:
    """The checks' Definitions with the three asset keys declared and the test resources."""
    return checks_defs(resources)
