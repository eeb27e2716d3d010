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


def _candles(closes, opens=None):
    minutes = pd.date_range("2026-12-05 10:00", periods=len(closes), freq="1min", tz="UTC")
    opens = opens or closes
    return pd.DataFrame(
        {
            "minute": minutes,
            "open": opens,
            "high": [max(o, c) for o, c in zip(opens, closes, strict=True)],
            "low": [min(o, c) for o, c in zip(opens, closes, strict=True)],
            "close": closes,
            "sma_5min": closes, "ema_3min": closes, "volatility_5min": closes,
            "change_1min": closes, "change_5min": closes,
            "observations": [2] * len(closes),
        }
    )  # fmt: skip


def test_candles_continue_from_the_previous_close_and_fold_into_coarser_intervals():
    candles = view.continuous_candles(_candles([10.0, 12.0, 9.0]))
    assert candles["open"].to_list() == [10.0, 10.0, 12.0]
    assert candles["high"].to_list() == [10.0, 12.0, 12.0]  # the open is inside the range
    assert candles["low"].to_list() == [10.0, 10.0, 9.0]
    five = view.resample_candles(_candles([float(v) for v in range(1, 11)]), 5)
    assert five["minute"].dt.minute.to_list() == [0, 5]
    assert five[["open", "high", "low", "close"]].values.tolist() == [[1, 5, 1, 5], [6, 10, 6, 10]]
    assert five["observations"].to_list() == [10, 10]


def test_prices_by_magnitude_never_with_si_prefixes():
    assert view.price_text(102700.5) == "102,700.50"
    assert view.price_text(1.23456) == "1.2346"
    assert view.price_text(0.00000913) == "0.000009130"
    assert view.price_tickformat([9.13e-6, 1.2e-5]) == ",.9f"
    assert view.price_tickformat([98000.0, 102700.0]) == ",.0f"
    assert view.price_tickformat([1.5, 3.0]) == ",.2f"
    assert view.round_sig(0.000009131234) == 0.00000913123


def test_forecasts_are_drawn_only_ahead_of_the_last_price():
    t = pd.Timestamp("2026-12-05 10:00", tz="UTC")
    forecasts = pd.DataFrame(
        {
            "origin_ts": [t, t + pd.Timedelta(minutes=5)],
            "target_ts": [t + pd.Timedelta(minutes=5), t + pd.Timedelta(minutes=10)],
        }
    )
    ahead = view.forecasts_ahead(forecasts, t + pd.Timedelta(minutes=5))
    assert ahead["origin_ts"].to_list() == [t + pd.Timedelta(minutes=5)]
    assert view.forecasts_ahead(forecasts, t + pd.Timedelta(minutes=11)) is None
    assert view.forecasts_ahead(None, t) is None


def test_market_rows_compute_the_hour_change_and_search():
    table = pd.DataFrame(
        {
            "coin_id": ["bitcoin", "dogecoin"], "symbol": ["btc", "doge"],
            "name": ["Bitcoin", None], "market_cap_rank": pd.array([1, 9], dtype="Int64"),
            "price": [101000.0, 0.2], "change_1min": [0.1, -0.2], "change_5min": [0.5, -1.0],
            "price_1h_ago": [100000.0, float("nan")], "change_24h": [2.0, -3.0],
            "market_cap": [2e12, 3e10], "total_volume": [5e10, 1e9],
            "high_24h": [102000.0, 0.21], "low_24h": [99000.0, 0.19],
            "volatility_5min": [10.0, 0.001],
        }
    )  # fmt: skip
    sparks = pd.DataFrame({"coin_id": ["bitcoin"] * 3, "price": [1.0, 2.0, 3.0]})
    rows = view.market_rows(table, sparks)
    assert rows["1h %"].iloc[0] == pytest.approx(1.0) and pd.isna(rows["1h %"].iloc[1])
    assert rows["coin"].to_list() == ["Bitcoin", "dogecoin"]  # the id where no name is known
    assert rows["last hour"].to_list() == [[1.0, 2.0, 3.0], None]
    assert view.search_market(rows, "DOGE").index.to_list() == ["dogecoin"]
    assert len(view.search_market(rows, " ")) == 2


def test_a_check_that_checked_nothing_is_shown_as_skipped():
    checks = pd.DataFrame(
        {
            "asset_key": ["price_indicators"] * 3, "check_name": ["a", "b", "c"],
            "passed": [True, True, False], "severity": ["PASSED", "PASSED", "WARN"],
            "evaluated_at": [pd.Timestamp("2026-12-05", tz="UTC")] * 3,
            "description": ["", "Skipped: no rows", ""],
            "metadata": [{}, {"rows": 0, "skipped": True}, {}],
        }
    )  # fmt: skip
    assert view.check_table(checks)["status"].to_list() == ["passed", "skipped", "failed (WARN)"]
