"""Fixtures of the dashboard tests: databases of their own on the session's real PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest

from marketflow_assets_tests.dashboard.dashboard_data import (
    create_database,
    drop_database,
    seed_market,
    synthetic_raw,
)


@pytest.fixture(scope="module")
def market_end() -> pd.Timestamp:
    """End of the seeded history: now (so data-age logic sees fresh data), whole seconds."""
    return pd.Timestamp.now(tz="UTC").floor("s")


@pytest.fixture(scope="module")
def seeded(postgres_url, market_end):
    """(url, raw, indicators, movers) of a database holding a seeded market."""
    url = create_database(postgres_url, "dash_seeded")
    raw = synthetic_raw(market_end)
    indicators, movers = seed_market(url, raw)
    yield url, raw, indicators, movers
    drop_database(postgres_url, url)


@pytest.fixture
def empty_db(postgres_url):
    """URL of a database without any table."""
    url = create_database(postgres_url, "dash_empty")
    yield url
    drop_database(postgres_url, url)
