"""The automation sensor's partition range covers data inside the current (still filling) hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from marketflow_assets.defs.common.partitions import hourly_partitions
from marketflow_assets.defs.indicators.sensors import MAX_AUTOMATIC_PARTITIONS, partition_range

# Ticks in quick succession: no alert cooldown or start-up grace (see defs/conftest.py).
pytestmark = pytest.mark.usefixtures("no_pacing")


def test_rows_inside_the_current_hour_map_to_the_current_partition():
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    oldest = max(hour, now - timedelta(seconds=30))
    assert partition_range(oldest, now) == (
        hour.strftime("%Y-%m-%d-%H:%M"),
        hour.strftime("%Y-%m-%d-%H:%M"),
    )


def test_rows_spanning_hours_map_to_every_hour_between():
    partitions = hourly_partitions(
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    )
    oldest = datetime(2024, 1, 1, 3, 59, 30, tzinfo=UTC)
    newest = datetime(2024, 1, 1, 5, 0, 10, tzinfo=UTC)
    assert partition_range(oldest, newest, partitions) == ("2024-01-01-03:00", "2024-01-01-05:00")


def test_range_is_capped_and_clamped_to_the_partitions():
    partitions = hourly_partitions(
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 10, tzinfo=UTC)
    )
    first, last = partition_range(
        datetime(2023, 12, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC), partitions
    )
    assert last == "2024-01-09-23:00"
    last_dt = datetime.strptime(last, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    first_dt = datetime.strptime(first, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    assert last_dt - first_dt == timedelta(hours=MAX_AUTOMATIC_PARTITIONS - 1)
    # rows entirely after the last partition have no partition to go to
    after = partition_range(
        datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC), partitions
    )
    assert after is None
