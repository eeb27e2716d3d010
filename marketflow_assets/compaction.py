"""Compaction of the ``raw_prices`` Delta table: OPTIMIZE, VACUUM, checkpoint, log cleanup.

The streaming job appends one small file per micro-batch and date, so a day holds thousands of
files. ``compact()`` keeps the table as fast to open and read after weeks as on the first day:

1. **OPTIMIZE** (``DeltaTable.optimize.compact``) of every ``date`` partition holding a closed
   hour (before ``before``, by default the current hour): the partition's small files are
   rewritten into few large ones, in commit order (``ts`` order, so a reader of one hour skips
   the other row groups by their statistics), in ONE commit that removes the inputs and adds the
   outputs with ``dataChange = false``. The stream keeps appending meanwhile (an append never
   conflicts with it); a reader pinned to an older version keeps reading that version's files.
2. **VACUUM** deletes the files removed from the table longer ago than the retention
   (``MARKETFLOW_RAW_RETENTION_HOURS``, at least 1 h, default 6), and files no version references
   (left by a job killed before its commit).
3. **Checkpoint + log cleanup**: a checkpoint of the newest version, then commit files older than
   the log retention (2 days) are removed, so opening the table reads one checkpoint and a few
   commits however long the history.

Idempotent: a partition that is already one file per target size is left alone. Only one
compaction runs at a time per table (``_compact.lock``; concurrent OPTIMIZEs would conflict).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from marketflow_assets.raw_dataset import (
    commit_properties,
    file_lock,
    open_table,
    snapshot_of,
    table_configuration,
    writer_properties,
)
from marketflow_assets.settings import floor_hour, load_raw_retention_hours

logger = logging.getLogger(__name__)

COMPACT_LOCK = "_compact.lock"
#: Size OPTIMIZE aims at for each output file.
TARGET_FILE_BYTES = 128 * 1024 * 1024


@dataclass
class CompactionReport:
    before: datetime
    dates_scanned: int = 0
    partitions_optimized: int = 0
    files_in: int = 0
    files_out: int = 0
    rows: int = 0
    vacuumed: int = 0
    version: int | None = None
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"compacted {self.partitions_optimized} date partition(s) with closed hours before "
            f"{self.before.isoformat()}: {self.files_in} file(s) -> {self.files_out}, "
            f"{self.rows} rows; vacuumed {self.vacuumed} file(s); "
            f"{self.dates_scanned} date partition(s) scanned; table version {self.version}"
        )
        if self.skipped:
            text += f"; skipped (retried next run): {'; '.join(self.skipped)}"
        return text


def compact(
    raw_dir: Path,
    before: datetime | None = None,
    log: Callable[[str], None] = logger.info,
    retention_hours: float | None = None,
) -> CompactionReport:
    """OPTIMIZE the partitions with closed hours before ``before`` (default: the current hour),
    VACUUM past the retention, checkpoint and clean the log (see the module docstring)."""
    raw_dir = Path(raw_dir)
    before = floor_hour(before or datetime.now(UTC))
    report = CompactionReport(before)
    retention = load_raw_retention_hours() if retention_hours is None else retention_hours
    table = open_table(raw_dir)
    if table is None:
        return report
    last_day = (before - timedelta(microseconds=1)).date()
    with file_lock(raw_dir / COMPACT_LOCK):
        wanted = table_configuration(load_raw_retention_hours())  # the setting, not an override
        current = table.metadata().configuration
        if any(current.get(k) != v for k, v in wanted.items()):  # a changed retention setting
            table.alter.set_table_properties(wanted, raise_if_not_exists=False)
            log(f"raw_prices table properties set: {wanted}")
        snap = snapshot_of(table, raw_dir)
        per_day: dict = {}
        for f in snap.files_all:
            per_day.setdefault(f.day, []).append(f)
        for day in sorted(per_day):
            if day > last_day:
                continue
            report.dates_scanned += 1
            small = [f for f in per_day[day] if f.size < TARGET_FILE_BYTES]
            if len(small) < 2:
                continue
            started = time.perf_counter()
            metrics = table.optimize.compact(
                partition_filters=[("date", "=", day.isoformat())],
                target_size=TARGET_FILE_BYTES,
                max_concurrent_tasks=1,
                writer_properties=writer_properties(),
                commit_properties=commit_properties("compact", {"date": day.isoformat()}),
            )
            removed, added = int(metrics["numFilesRemoved"]), int(metrics["numFilesAdded"])
            if removed:
                report.partitions_optimized += 1
                report.files_in += removed
                report.files_out += added
                report.rows += sum(f.rows or 0 for f in small)
                log(
                    f"compact date={day}: {removed} file(s) -> {added} "
                    f"in {time.perf_counter() - started:.1f} s"
                )
        table.update_incremental()
        vacuumed = table.vacuum(
            retention_hours=max(1, int(retention)),
            dry_run=False,
            enforce_retention_duration=False,
            full=True,  # also files no version references (a job killed before its commit)
            commit_properties=commit_properties("vacuum"),
        )
        report.vacuumed = len(vacuumed)
        table.update_incremental()
        table.create_checkpoint()
        table.cleanup_metadata()
        report.version = table.version()
    return report


# ------------------------------------------------------------------------------------------------
# `marketflow compact [--before ISO]`
# ------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument(
        "--before",
        default=None,
        metavar="ISO",
        help="compact (Delta OPTIMIZE) the date partitions holding hours before this UTC time, "
        "rounded down to the hour (default: the current hour, i.e. every closed hour)",
    )


def parse_before(value: str | None) -> datetime | None:
    from marketflow_assets.settings import ConfigError

    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--before: not an ISO date/time: {value!r}") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def run(args, settings) -> int:
    """Handler of ``marketflow compact``: one summary line, exit 0 (OPTIMIZE + VACUUM)."""
    before = parse_before(args.before)
    started = time.perf_counter()
    report = compact(settings.raw_dir, before, log=logger.info)
    print(f"{report.summary()} in {time.perf_counter() - started:.1f} s ({settings.raw_dir})")
    return 0
