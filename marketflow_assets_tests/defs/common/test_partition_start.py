"""The first hourly partition is the same for every process (issue 28): persisted in the data dir
by the first load, moved only earlier when older raw data appears, overridden by the setting."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

from marketflow_assets.defs.common.partitions import (
    PARTITION_START_FILE,
    default_partition_start,
    hourly_partitions,
)
from marketflow_assets.settings import load_settings
from marketflow_assets_tests.helpers import write_raw_parquet

NOW = datetime(2026, 12, 5, 0, 40, tzinfo=UTC)
TODAY = datetime(2026, 12, 5, tzinfo=UTC)


def _settings(data_dir, start=None):
    data_dir.mkdir(parents=True, exist_ok=True)  # `up` or the first component made it
    return dataclasses.replace(load_settings({}), data_dir=data_dir, partition_start=start)


def _poll(ts: datetime) -> list[tuple]:
    return [("bitcoin", "btc", ts, 100.0)]


def test_every_later_load_sees_the_first_loads_start_or_an_earlier_one(tmp_path):
    data = tmp_path / "data"
    settings = _settings(data)
    # the webserver loads before any raw data exists: the start of today, persisted
    assert default_partition_start(settings, now=NOW) == TODAY
    assert (data / PARTITION_START_FILE).read_text().strip() == "2026-12-05T00:00:00Z"

    # the first rows arrive at 01:xx; a run worker loading now still gets 00:00 (it used to get
    # 01:00, and the schedule's 00:00 partition failed in the run)
    write_raw_parquet(data / "raw_prices", _poll(TODAY + timedelta(hours=1, minutes=5)))
    assert default_partition_start(settings, now=NOW + timedelta(hours=1)) == TODAY

    # a replay of older recordings: the start moves earlier, never later
    write_raw_parquet(data / "raw_prices", _poll(TODAY - timedelta(hours=2, minutes=30)))
    earlier = TODAY - timedelta(hours=3)
    assert default_partition_start(settings, now=NOW) == earlier
    assert default_partition_start(settings, now=NOW + timedelta(days=3)) == earlier
    partitions = hourly_partitions(default_partition_start(settings))
    assert partitions.get_first_partition_key() == "2026-12-04-21:00"


def test_the_setting_wins_and_is_not_persisted(tmp_path):
    data = tmp_path / "data"
    start = datetime(2020, 1, 1, tzinfo=UTC)
    assert default_partition_start(_settings(data, start), now=NOW) == start
    assert not (data / PARTITION_START_FILE).exists()


def test_processes_loading_at_once_agree(tmp_path):
    data = tmp_path / "data"
    settings = _settings(data)
    seen = []
    moments = [NOW + timedelta(days=d) for d in range(8)]  # each thread a different "today"
    threads = [
        threading.Thread(target=lambda m=m: seen.append(default_partition_start(settings, now=m)))
        for m in moments
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = default_partition_start(settings, now=NOW + timedelta(days=30))
    assert final == min(seen) == TODAY  # the earliest candidate won; nobody lost it later


def test_a_missing_data_dir_is_not_created_to_load_the_definitions(tmp_path):
    data = tmp_path / "data"
    settings = dataclasses.replace(load_settings({}), data_dir=data, partition_start=None)
    assert default_partition_start(settings, now=NOW) == TODAY
    assert not data.exists()
