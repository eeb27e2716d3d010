"""Time partitions of the indicator assets: hourly, UTC, starting at the first hour of data.

Partitions depend on their predecessor (``TimeWindowPartitionMapping(start_offset=-1,
end_offset=-1)``) because the EMA carries state. Why hourly: ``docs/DECISIONS.md``.

The first partition is ``MARKETFLOW_PARTITION_START`` (ISO date or date-time, UTC) when set.
Else it is persisted in ``$MARKETFLOW_DATA_DIR/partition_start`` so that every process (the
webserver, the daemon, each run worker, ``marketflow follow``) sees the same partitions whenever
it loads the definitions: the first process to load once the data dir exists writes the hour of
the oldest raw row (the start of today, UTC, when there is no data yet); a later one moves it only
*earlier*, when older raw data appeared (a replay of old recordings). So a process that loaded
earlier never asks for a partition that a process loading later lacks.
``marketflow refresh`` extends the range itself when asked for data before it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from marketflow_assets.settings import Settings, load_settings
from marketflow_assets.settings import floor_hour as floor_hour  # the one floor, re-exported
from marketflow_assets.settings import parse_utc as parse_utc  # re-exported (older imports)

PARTITION_FMT = "%Y-%m-%d-%H:%M"
#: Where the first partition is kept (under ``$MARKETFLOW_DATA_DIR``).
PARTITION_START_FILE = "partition_start"
#: Partitions per run in backfills (one day); each run continues from the previous one's state.
PARTITIONS_PER_BACKFILL_RUN = 24


def default_partition_start(settings: Settings | None = None, now: datetime | None = None):
    """First hourly partition: the configured start, else the first hour of raw data, else
    the start of today (UTC)."""
    from marketflow_assets.raw_dataset import oldest_raw_ts

    settings = settings or load_settings()
    if settings.partition_start is not None:
        return settings.partition_start
    oldest = oldest_raw_ts(settings.raw_dir)
    if oldest is not None:
        candidate = floor_hour(oldest)
    else:
        now = now or datetime.now(UTC)
        candidate = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return persisted_start(Path(settings.data_dir), candidate)


def persisted_start(data_dir: Path, candidate: datetime) -> datetime:
    """The first partition stored in ``data_dir/partition_start``, moved to ``candidate`` when
    that is earlier (or nothing was stored); read-compare-write under a file lock, so two
    processes loading at once agree. A data dir that does not exist (nothing has run here yet:
    it is not created just to load the definitions) or cannot be written gives ``candidate``."""
    import fcntl
    import os

    path = data_dir / PARTITION_START_FILE
    if not data_dir.is_dir():  # nothing runs here yet (`dagster definitions validate`)
        return candidate
    try:
        with open(data_dir / f".{PARTITION_START_FILE}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                stored = parse_utc(path.read_text().strip())
            except (OSError, ValueError):
                stored = None
            if stored is not None and stored <= candidate:
                return stored
            tmp = path.with_name(f".{PARTITION_START_FILE}.tmp")
            tmp.write_text(candidate.strftime("%Y-%m-%dT%H:%M:%SZ") + "\n")
            os.replace(tmp, path)
            return candidate
    except OSError:
        return candidate


def hourly_partitions(
    start: datetime | None = None, end: datetime | None = None
) -> dg.TimeWindowPartitionsDefinition:
    """Hourly UTC partitions from ``start`` (default :func:`default_partition_start`).

    Without ``end`` the range runs up to and including the current (still filling) hour, so the
    streaming data always has a partition.
    """
    start = start or default_partition_start()
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


#: The code location's partitions (start read when the definitions load; see the module docstring).
HOURLY = hourly_partitions()
