"""Time partitions of the indicator assets: hourly, UTC.

Why hourly: a refresh then touches at most one hour of raw rows (~30k rows for 250 coins polled
every 30 s) plus the 5-minute lookback, whatever the length of the history, and the newest
partition can be recomputed every poll within seconds. Partitions depend on their predecessor
(``TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)``) because the EMA carries state.

The first partition is ``MARKETFLOW_PARTITION_START`` (ISO date or date-time, UTC; default
``2020-01-01``); ``marketflow refresh`` extends the range itself when the raw data starts earlier.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import dagster as dg

from marketflow_assets.settings import ConfigError

PARTITION_START_ENV = "MARKETFLOW_PARTITION_START"
DEFAULT_PARTITION_START = datetime(2020, 1, 1, tzinfo=UTC)
PARTITION_FMT = "%Y-%m-%d-%H:%M"
#: Partitions per run in backfills (one day); each run continues from the previous one's state.
PARTITIONS_PER_BACKFILL_RUN = 24


def parse_utc(value: str, name: str = "time") -> datetime:
    """ISO-8601 date or date-time -> tz-aware UTC datetime (naive input means UTC)."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r} is not an ISO-8601 date or date-time") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def partition_start_from_env() -> datetime:
    value = os.environ.get(PARTITION_START_ENV, "").strip()
    if not value:
        return DEFAULT_PARTITION_START
    start = parse_utc(value, PARTITION_START_ENV)
    return start.replace(minute=0, second=0, microsecond=0)


def hourly_partitions(
    start: datetime | None = None, end: datetime | None = None
) -> dg.TimeWindowPartitionsDefinition:
    """Hourly UTC partitions from ``start`` (default: env / 2020-01-01).

    Without ``end`` the range runs up to and including the current (still filling) hour, so the
    streaming data always has a partition.
    """
    start = start or partition_start_from_env()
    return dg.HourlyPartitionsDefinition(
        start_date=start.strftime(PARTITION_FMT),
        end_date=end.strftime(PARTITION_FMT) if end is not None else None,
        timezone="UTC",
        end_offset=0 if end is not None else 1,
    )


def self_dependency() -> dg.TimeWindowPartitionMapping:
    """Each partition depends on the previous one (EMA state carries over)."""
    return dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)


def backfill_policy() -> dg.BackfillPolicy:
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_BACKFILL_RUN)


HOURLY = hourly_partitions()
