"""The observation sensor: table version as data version, only new commits read per tick.

Cost is counted, not timed: commit infos read per tick, which must not depend on the history.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable

from marketflow_assets import compaction
from marketflow_assets.defs.raw_prices import sensors
from marketflow_assets.defs.raw_prices.sensors import raw_prices_observation_sensor
from marketflow_assets.raw_dataset import open_table
from marketflow_assets.resources import RawDataResource
from marketflow_assets_tests.compaction_helpers import COINS, write_batch

# Ticks in quick succession: no alert cooldown or start-up grace (see defs/conftest.py).
pytestmark = pytest.mark.usefixtures("no_pacing")

END = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)  # the open hour starts here


def tick(data_dir: Path, instance, cursor=None):
    resources = {"raw_data": RawDataResource(data_dir=str(data_dir))}
    return raw_prices_observation_sensor(
        dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
    )


def test_each_tick_reads_only_the_new_commits_whatever_the_history(tmp_path, monkeypatch):
    read: list[int] = []
    original = DeltaTable.history

    def counting(self, limit=None):
        out = original(self, limit)
        read.append(len(out))
        return out

    monkeypatch.setattr(DeltaTable, "history", counting)
    costs = {}
    for hours in (1, 48):
        raw = tmp_path / f"h{hours}" / "raw_prices"
        for h in range(hours, 0, -1):
            hour = END - timedelta(hours=h)
            polls = [hour + timedelta(minutes=10), hour + timedelta(minutes=40)]
            write_batch(raw, polls, hours - h)
        compaction.compact(raw, before=END, retention_hours=1)
        instance = dg.DagsterInstance.ephemeral()
        first = tick(raw.parent, instance)
        assert first.asset_events[0].metadata["new_rows"].value == 2 * hours * len(COINS)
        write_batch(raw, [END + timedelta(seconds=5)], 10_000)
        read.clear()
        result = tick(raw.parent, instance, first.cursor)
        costs[hours] = sum(read)
        (event,) = result.asset_events
        assert event.metadata["new_rows"].value == len(COINS)
        assert event.metadata["new_commits"].value == 1
        version = open_table(raw).version()
        assert event.metadata["table_version"].value == version
        assert event.tags["dagster/data_version"] == str(version)
        assert event.metadata["oldest_new_ts"].value == (END + timedelta(seconds=5)).timestamp()
        assert event.metadata["newest_ts"].value == (END + timedelta(seconds=5)).timestamp()
    assert costs[1] == costs[48] == 1


def test_compactions_are_not_reported_as_new_data(tmp_path):
    raw = tmp_path / "raw_prices"
    write_batch(raw, [END - timedelta(minutes=50), END - timedelta(minutes=20)], 1)
    instance = dg.DagsterInstance.ephemeral()
    first = tick(tmp_path, instance)
    assert first.asset_events[0].metadata["new_rows"].value == 6
    assert isinstance(tick(tmp_path, instance, first.cursor), dg.SkipReason)
    write_batch(raw, [END - timedelta(minutes=10)], 2)
    compaction.compact(raw, before=END, retention_hours=1)
    again = tick(tmp_path, instance, first.cursor)
    (event,) = again.asset_events
    assert event.metadata["new_rows"].value == 3  # the append, not the OPTIMIZE's rewrite
    assert event.metadata["operations"].value == {"stream": 1, "compact": 1}
    third = tick(tmp_path, instance, again.cursor)
    assert isinstance(third, dg.SkipReason)


def test_no_table_yet_and_an_old_cursor(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    assert isinstance(tick(tmp_path, instance), dg.SkipReason)
    write_batch(tmp_path / "raw_prices", [END], 1)
    legacy_cursor = '{"mtime_ns": 5, "recent": [], "root_mtime_ns": 1, "watch": {}}'
    assert sensors.parse_cursor(legacy_cursor) is None
    result = tick(tmp_path, instance, legacy_cursor)  # reported once from the start
    assert result.asset_events[0].metadata["new_rows"].value == len(COINS)
