"""``defs/indicators/compute.py`` in process: the raw window of an hour is the hour plus the
indicators' 5-minute lookback, read from exactly the files that may hold it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from marketflow_assets.defs.indicators.compute import (
    raw_window_files,
    read_raw_window_local,
    session,
)
from marketflow_assets_tests.helpers import write_raw_parquet

START = datetime(2024, 5, 1, 12, tzinfo=UTC)
END = START + timedelta(hours=1)


def _poll(minutes: float) -> list[tuple]:
    ts = START + timedelta(minutes=minutes)
    return [("bitcoin", "btc", ts, 100.0), ("ethereum", "eth", ts, 10.0)]


def test_the_window_is_the_hour_plus_five_minutes_of_lookback(tmp_path):
    raw = tmp_path / "raw_prices"
    before = write_raw_parquet(raw, _poll(-10))  # outside the lookback
    lookback = write_raw_parquet(raw, _poll(-4))
    inside = write_raw_parquet(raw, _poll(30))
    after = write_raw_parquet(raw, _poll(60))  # the next hour (end is exclusive)

    files = {f.path for f in raw_window_files(raw, START, END)}
    assert set(lookback) | set(inside) <= files
    assert not (set(before) | set(after)) & files

    rows = read_raw_window_local(raw_window_files(raw, START, END), START, END)
    times = sorted(pd.to_datetime(rows["ts"], utc=True).unique())
    assert times == [pd.Timestamp(START + timedelta(minutes=m)) for m in (-4, 30)]
    assert len(rows) == 4


def test_session_starts_spark_only_when_asked():
    calls = []
    assert session(lambda: calls.append(1) or "spark") == "spark" and calls == [1]
    assert session("a session") == "a session"
