"""The observation sensor's cost per tick does not depend on the length of the history.

Cost is counted, not timed: directories statted and listed, names listed, files statted.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from marketflow_assets import compaction
from marketflow_assets.defs.raw_prices.sensors import (
    RawCursor,
    new_raw_files,
    raw_prices_observation_sensor,
)
from marketflow_assets.resources import RawDataResource
from marketflow_assets_tests.compaction_helpers import write_batch

# Ticks in quick succession: no alert cooldown or start-up grace (see defs/conftest.py).
pytestmark = pytest.mark.usefixtures("no_pacing")

END = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)  # the open hour starts here


def history(raw: Path, hours: int) -> None:
    """``hours`` closed hours before END, two polls per hour, compacted as the job leaves them;
    then the open hour's first streaming file."""
    for h in range(hours, 0, -1):
        hour = END - timedelta(hours=h)
        write_batch(raw, [hour + timedelta(minutes=10), hour + timedelta(minutes=40)], 2 * h)
    compaction.compact(raw, before=END)
    write_batch(raw, [END + timedelta(seconds=5)], 1)


def steady_tick(raw: Path) -> tuple[list, object]:
    """Bootstrap the cursor, then one tick after the streaming job adds one file (the tick's
    clock is a few seconds later, as a 5 s sensor interval makes it)."""
    _, cursor, _ = new_raw_files(raw, RawCursor())
    _, cursor, _ = new_raw_files(raw, cursor)
    write_batch(raw, [END + timedelta(seconds=35)], 2)
    new, _, stats = new_raw_files(raw, cursor, now_ns=time.time_ns() + 5_000_000_000)
    return new, stats


def test_sensor_cost_is_independent_of_history(tmp_path):
    stats = {}
    for label, hours in (("1h", 1), ("2d", 48), ("30d", 30 * 24)):
        raw = tmp_path / label / "raw_prices"
        history(raw, hours)
        assert len(list((raw).glob("date=*"))) >= (1 if hours == 1 else 2)
        new, stats[label] = steady_tick(raw)
        assert [f.min_ts for f in new] == [END + timedelta(seconds=35)], label
    one, two, thirty = stats["1h"], stats["2d"], stats["30d"]
    assert thirty == two  # days beyond the watched ones cost nothing
    assert thirty.root_listed == 0 and thirty.dirs_listed == 1
    assert thirty.dirs_statted == one.dirs_statted + 1  # watches 2 dates, 1h history has one
    assert thirty.files_statted == one.files_statted == 2  # only the open hour's files
    assert thirty.entries_listed <= one.entries_listed + 24  # at most a day of compacted files


def test_quiet_tick_lists_nothing_and_late_dates_are_seen(tmp_path):
    raw = tmp_path / "raw_prices"
    history(raw, 48)
    now = time.time_ns()
    _, cursor, _ = new_raw_files(raw, RawCursor())
    _, cursor, _ = new_raw_files(raw, cursor, now_ns=int(now + 10e9))
    new, cursor, stats = new_raw_files(raw, cursor, now_ns=int(now + 3600e9))
    assert new == [] and stats.dirs_listed == 0 and stats.entries_listed == 0
    # a replay of old data creates an old date directory: the root changed, it is found
    write_batch(raw, [datetime(2026, 1, 5, 3, 0, tzinfo=UTC)], 99, sink="0ld")
    new, cursor, stats = new_raw_files(raw, cursor)
    assert [f.day.isoformat() for f in new] == ["2026-01-05"] and stats.root_listed == 1


def test_compacted_files_are_not_reported_again(tmp_path):
    raw = tmp_path / "raw_prices"
    write_batch(raw, [END - timedelta(minutes=50), END - timedelta(minutes=20)], 1)
    instance = dg.DagsterInstance.ephemeral()
    resources = {"raw_data": RawDataResource(data_dir=str(tmp_path))}
    first = raw_prices_observation_sensor(
        dg.build_sensor_context(instance=instance, resources=resources)
    )
    assert first.asset_events[0].metadata["new_rows"].value == 6
    compaction.compact(raw, before=END)
    assert [p.name[:6] for p in raw.glob("date=*/*.parquet")] == ["cpart-"]
    again = raw_prices_observation_sensor(
        dg.build_sensor_context(instance=instance, resources=resources, cursor=first.cursor)
    )
    assert not getattr(again, "asset_events", None)
    # the cursor forgets the files compaction removed (it does not grow with history)
    assert RawCursor.parse(again.cursor).recent == []
