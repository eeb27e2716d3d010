"""The dashboard shows which path wrote the newest price_indicators row, and its age."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

import pandas as pd
import pytest

from marketflow_assets import indicators as ind
from marketflow_assets.dashboard import queries as q
from marketflow_assets.dashboard import view
from marketflow_assets.live.store import LiveStore
from marketflow_assets_tests.dashboard.dashboard_data import (
    create_database,
    drop_database,
    seed_market,
    synthetic_raw,
)
from marketflow_assets_tests.dashboard.test_app import run_app, texts


@pytest.fixture
def market(postgres_url):
    url = create_database(postgres_url, "dash_live")
    end = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(seconds=30)
    raw = synthetic_raw(end)
    seed_market(url, raw)  # Dagster's rows (replace_period)
    yield url, raw
    drop_database(postgres_url, url)


def latest_markdown(at) -> str:
    return next(m for m in texts(at.markdown) if m.startswith("**Latest snapshot**"))


def test_latest_row_source_and_age(market, monkeypatch):
    url, raw = market
    db = q.Database(url)
    try:
        source, ts = q.latest_row_source(db)
        assert (source, ts) == ("dagster", raw["ts"].max())
        gc.collect()
        gc.disable()
        try:
            at = run_app(monkeypatch, url, MARKETFLOW_FRESHNESS_WARN_SECONDS="3600",
                         MARKETFLOW_FRESHNESS_ERROR_SECONDS="7200")  # fmt: skip
            assert "latest row: dagster" in latest_markdown(at)
            # the live path writes a newer poll
            store = LiveStore(url)
            try:
                state = store.load_state()
                poll_ts = pd.Timestamp.now(tz="UTC").floor("s")
                last = raw[raw["ts"] == raw["ts"].max()]
                poll = last.assign(ts=poll_ts, current_price=last["current_price"] * 1.01)
                rows, _, _ = ind.advance_indicators(state, poll)
                assert len(rows) == len(poll)
                store.write_batch("t", rows, {0: 1})
            finally:
                store.close()
            assert q.latest_row_source(db) == ("live", poll_ts)
            at = run_app(monkeypatch, url, MARKETFLOW_FRESHNESS_WARN_SECONDS="3600",
                         MARKETFLOW_FRESHNESS_ERROR_SECONDS="7200")  # fmt: skip
            text = latest_markdown(at)
            assert "latest row: live, " in text and " s old" in text, text
        finally:
            gc.enable()
    finally:
        db.close()


def test_latest_row_text():
    now = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
    assert view.latest_row_text(None, now) == "latest row: none"
    latest = ("live", datetime(2026, 3, 1, 12, 0, 3, tzinfo=UTC))
    assert view.latest_row_text(latest, now) == "latest row: live, 2 s old"
    latest = ("dagster", datetime(2026, 3, 1, 11, 50, tzinfo=UTC))
    assert view.latest_row_text(latest, now) == "latest row: dagster, 10 min old"
