"""The pure formulas behind the stream checks (documented in monitoring/lag.py)."""

import dataclasses

import dagster as dg

from marketflow_assets.defs.monitoring import stream_checks as stream
from marketflow_assets.defs.monitoring.stream_sensors import windowed_dead_letters
from marketflow_assets.monitoring import lag
from marketflow_assets.settings import load_monitoring_settings

SETTINGS = load_monitoring_settings({})


def test_lag_records_and_seconds():
    assert lag.lag_records({0: 10, 1: 7}, {0: 12, 1: 7, 2: 3}) == {0: 2, 1: 0, 2: 3}
    assert lag.lag_records({0: 50}, {0: 4}) == {0: 0}  # broker restarted: never negative
    assert lag.lag_seconds([], now=100.0) == (0.0, None)
    assert lag.lag_seconds([40.0, 25.0], now=100.0) == (75.0, 25.0)


def test_rates():
    assert lag.rate(0, 0) is None
    assert lag.rate(1, 3) == 0.25
    commits = [(1, 10.0, {"rows_in": 100, "rejects": 50}), (2, 50.0, {"rows_in": 10, "rejects": 1})]
    assert lag.reject_rate(commits, since=20.0) == (0.1, 1, 10)


def test_windowed_dead_letters_and_broker_restart():
    d_pub, d_dead, hist = windowed_dead_letters([], 0.0, 100, 0, 600)
    assert (d_pub, d_dead) == (0, 0)
    d_pub, d_dead, hist = windowed_dead_letters(hist, 60.0, 140, 10, 600)
    assert (d_pub, d_dead) == (40, 10)
    d_pub, d_dead, hist = windowed_dead_letters(hist, 650.0, 150, 12, 600)
    assert (d_pub, d_dead) == (10, 2)  # the snapshot at t=0 left the window
    d_pub, d_dead, hist = windowed_dead_letters(hist, 660.0, 5, 0, 600)  # counts went down
    assert (d_pub, d_dead) == (0, 0) and len(hist) == 1


def test_lag_outcome_thresholds():
    committed = lag.Committed(3, {0: 10}, 990.0)

    def outcome(seconds, total=5, c=committed):
        report = lag.LagReport({0: total}, seconds, c)
        return stream.lag_outcome(report, SETTINGS, now=1000.0)

    assert outcome(0.0, total=0).passed
    assert outcome(59.0).passed
    warn = outcome(61.0)
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN
    assert "lag" in warn.description.lower()
    assert warn.metadata["catching_up"] is True  # committed 10 s ago: a backlog, not a stall
    stalled = stream.lag_outcome(
        lag.LagReport({0: 5}, 90.0, lag.Committed(3, {0: 10}, 900.0)), SETTINGS, now=1000.0
    )
    assert "catching_up" not in stalled.metadata
    error = outcome(181.0)
    assert error.severity == dg.AssetCheckSeverity.ERROR
    assert error.metadata["lag_seconds"] == 181.0 and error.metadata["lag_records"] == 5
    fresh = outcome(90.0, c=lag.Committed(None, {}, None))
    assert not fresh.passed and fresh.metadata["no_data"] is True


def test_threshold_settings_are_validated():
    import pytest

    from marketflow_assets.settings import ConfigError

    with pytest.raises(ConfigError):
        load_monitoring_settings({"MARKETFLOW_LAG_WARN_SECONDS": "200"})  # above ERROR's 180
    with pytest.raises(ConfigError):
        load_monitoring_settings({"MARKETFLOW_DLQ_RATE_WARN": "lots"})
    tuned = load_monitoring_settings({"MARKETFLOW_LAG_WARN_SECONDS": "30"})
    assert dataclasses.replace(SETTINGS, lag_warn_seconds=30.0) == tuned
