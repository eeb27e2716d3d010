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
    """End of the seeded history: now (so data-age logic sees fresh data), whole seconds, never
    a whole minute: a last poll at hh:mm:00 opens a one-minute candle of its own, and a forecast
    whose target is that poll (test_forecast_panels' newest) is then not ahead of the last
    candle, so no cone is drawn - what the coin view should do, and a test failing 1 run in 60."""
    now = pd.Timestamp.now(tz="UTC").floor("s")
    return now - pd.Timedelta(seconds=1) if now.second == 0 else now


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
