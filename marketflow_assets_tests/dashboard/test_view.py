"""The plain functions behind the dashboard's numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from marketflow_assets.dashboard import view
from marketflow_assets.defs.common.outcome import CheckSettings
from marketflow_assets.defs.monitoring.checks import freshness_outcome

NOW = pd.Timestamp("2026-03-01T12:00:00Z")


@pytest.mark.parametrize("age", [0, 119.9, 120, 120.1, 299, 300, 300.5, 86400])
def test_data_age_uses_the_freshness_checks_thresholds(age):
    newest = NOW - pd.Timedelta(seconds=age)
    got = view.data_age(newest, NOW, 120, 300)
    outcome = freshness_outcome(newest.to_pydatetime(), NOW.to_pydatetime(), CheckSettings(), "x")
    expected = "OK" if outcome.passed else outcome.severity.value
    assert got.status == expected and got.seconds == pytest.approx(age)


def test_thresholds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_WARN_SECONDS", "30")
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_ERROR_SECONDS", "90")
    assert view.freshness_thresholds() == (30.0, 90.0)


def test_formatting():
    assert view.percent(1.234567) == "+1.23%"
    assert view.percent(-0.005) == "-0.01%" and view.percent(None) == "—"
    assert [view.rank_change(1, p) for p in (4, 1, None)] == ["▲ 3", "=", "new"]
    assert view.rank_change(2, pd.NA) == "new" and view.rank_change(3, 1) == "▼ 2"
    assert view.human_duration(45) == "45 s" and view.human_duration(3 * 86400) == "3.0 days"


def test_tiles_and_movers_table():
    snapshot = pd.DataFrame(
        {"coin_id": ["a", "b", "c", "d"], "change_5min": [1.0, -2.0, 0.0, float("nan")]}
    )
    assert view.market_tiles(snapshot) == view.Tiles(coins=4, advancers=1, decliners=1, unchanged=1)
    movers = pd.DataFrame(
        {
            "direction": ["gainer", "gainer", "loser"],
            "rank": [2, 1, 1],
            "coin_id": ["b", "a", "c"],
            "symbol": ["bb", "aa", None],
            "price": [0.000123456, 1234.5, 2.0],
            "change_5min": [0.5, 1.005, -3.0],
            "previous_rank": pd.array([2, pd.NA, 7], dtype="Int64"),
        }
    )
    table = view.movers_table(movers, "gainer")
    assert table["coin id"].to_list() == ["a", "b"]
    assert table["symbol"].to_list() == ["AA", "BB"]
    assert table["price"].to_list() == ["1,234.50", "0.0001235"]  # by magnitude, no 1.2e-04
    assert table["rank change"].to_list() == ["new", "="]


def test_warm_up_texts_say_what_the_page_waits_for():
    t0 = pd.Timestamp("2026-12-05 10:00:00", tz="UTC")
    polls = [t0 + pd.Timedelta(seconds=30 * i) for i in range(4)]  # 1.5 minutes of polls
    text = view.movers_warm_up(polls, t0 + pd.Timedelta(seconds=100))
    assert text.startswith("Warming up: the movers compare prices five minutes apart; 4 polls")
    assert "the first movers in about 3 min (10:05:00 UTC)" in text
    assert view.movers_warm_up([], t0) == "Waiting for the first poll."
    forecast = view.forecast_warm_up(polls)
    assert forecast.startswith("Forecasts warming up: 0 of 60 forecast origins, about ")
    assert "No forecast is served before a model was trained" in forecast
