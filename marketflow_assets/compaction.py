"""Compaction of the raw Parquet dataset: one file per closed hour, atomic, exactly once.

The Spark streaming job writes one file per micro-batch and ``date=`` partition, so a day holds
thousands of small files. ``compact()`` rewrites every *closed* hour (before ``before``, by
default the current hour) of each ``date=`` directory into one file per hour; the rows are
unchanged. Readers, the streaming job's cross-batch dedup and compaction agree on one visibility
protocol, implemented in :mod:`marketflow_assets.raw_dataset` (the one module every reader lists
files through; no Dagster import, so the Spark job uses it too):

* ``date=D/_compaction.json`` (the *manifest*, replaced atomically with ``os.replace``) holds a
  ``version`` (incremented by every change), ``files`` (the compacted files that are live) and
  ``superseded`` (inputs of a committed compaction not deleted yet).
* Visible files of a directory = compacted files (``cpart-<hour>-<min ts µs>-<max ts µs>-<token>``
  ``.parquet``) listed in ``files`` + every other Parquet file (the streaming job's
  ``part-...``, or a foreign tool's) not listed in ``superseded``; names starting with ``.`` or
  ``_`` are never visible. A compacted file that is not in the manifest (being written, or left
  by a crash) is invisible.
* ``raw_dataset.visible_names`` reads the manifest, lists the directory and reads the manifest
  again; if the version moved in between it starts over, so a listing always matches one manifest
  version: before a commit it shows the old files, after it the new ones -- never both, never
  neither.
* A commit takes the writer lock (``raw_prices/_writer.lock``, also held by the streaming job's
  sink for a whole micro-batch), checks that every input is still visible (a rolled-back batch
  may have removed one), writes the manifest that swaps inputs for outputs, deletes the inputs
  and writes the manifest again without them. A reader that listed before the commit and opens
  an input after its deletion gets ``FileNotFoundError``; ``raw_dataset.retry_vanished`` lists
  again.

Safety against the streaming job (``spark_streaming/kafka_streaming.py``): its sink holds the
writer lock from the rollback of an interrupted attempt until its commit record, and deduplicates
against ``raw_dataset.day_files`` -- which include compacted files -- so a replay after compaction
still finds its rows. Compaction never reads the sink's pending state: if a batch's files were
published but not committed when a compaction folded them in, the replay rolls back (deletes)
those already-superseded files and its dedup finds the rows in the compacted file.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from marketflow_assets.raw_dataset import (
    COMPACT_LOCK,
    Manifest,
    date_dirs,
    file_lock,
    from_micros,
    is_compacted,
    micros,
    name_ts_range,
    read_manifest,
    visible_names,
    writer_lock,
)
from marketflow_assets.raw_dataset import write_manifest as _write_manifest
from marketflow_assets.settings import floor_hour

logger = logging.getLogger(__name__)

_HOUR_FMT = "%Y%m%d%H"


# ------------------------------------------------------------------------------------------------
# Compaction
# ------------------------------------------------------------------------------------------------
@dataclass
class CompactionReport:
    before: datetime
    dates_scanned: int = 0
    hours_compacted: int = 0
    files_in: int = 0
    files_out: int = 0
    rows: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"compacted {self.hours_compacted} hour(s) before {self.before.isoformat()}: "
            f"{self.files_in} file(s) -> {self.files_out}, {self.rows} rows, "
            f"{self.dates_scanned} date partition(s) scanned"
        )
        if self.skipped:
            text += f"; skipped (retried next run): {'; '.join(self.skipped)}"
        return text


def _file_range(path: Path) -> tuple[int, int] | None:
    rng = name_ts_range(path.name)
    if rng is not None:
        return rng
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        column = pq.read_table(path, columns=["ts"]).column("ts")
    except (OSError, ValueError, KeyError):
        return None
    if len(column) == column.null_count:
        return None
    bounds = pc.min_max(column).as_py()
    return micros(bounds["min"]), micros(bounds["max"])


def _hours(rng: tuple[int, int]) -> list[datetime]:
    first, last = floor_hour(from_micros(rng[0])), floor_hour(from_micros(rng[1]))
    out = []
    while first <= last:
        out.append(first)
        first += timedelta(hours=1)
    return out


def _read_inputs(folder: Path, names: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(folder / n) for n in names]
    schema = tables[0].schema
    tables = [t if t.schema.equals(schema) else t.cast(schema) for t in tables]
    return pa.concat_tables(tables)


def _write_output(folder: Path, table, hour: datetime) -> str:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    bounds = pc.min_max(table["ts"]).as_py()
    name = (
        f"cpart-{hour.strftime(_HOUR_FMT)}-{micros(bounds['min'])}-{micros(bounds['max'])}-"
        f"{uuid.uuid4().hex[:8]}.parquet"
    )
    tmp = folder / f".tmp-{name}"
    pq.write_table(table, tmp, compression="snappy")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.rename(tmp, folder / name)  # a cpart file not in the manifest is still invisible
    return name


def _cleanup(folder: Path) -> None:
    """Remove what an interrupted compaction left behind (invisible files only)."""
    manifest = read_manifest(folder)
    live = set(manifest.files)
    for name in os.listdir(folder):
        stale = name.startswith(".tmp-cpart-") or (is_compacted(name) and name not in live)
        if stale:
            (folder / name).unlink(missing_ok=True)


def compact_day(
    raw_dir: Path, folder: Path, before: datetime, report: CompactionReport
) -> CompactionReport:
    """Compact the closed hours (< ``before``) of one ``date=`` directory; see :func:`compact`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = visible_names(folder)
    by_hour: dict[datetime, list[str]] = {}
    for name in names:
        rng = _file_range(folder / name)
        if rng is None:
            continue  # empty or unreadable file: not ours to rewrite
        for hour in _hours(rng):
            by_hour.setdefault(hour, []).append(name)
    todo = {
        hour
        for hour, files in by_hour.items()
        if hour < before and not (len(files) == 1 and is_compacted(files[0]))
    }
    if not todo:
        return report
    inputs = sorted({name for hour in todo for name in by_hour[hour]})
    table = _read_inputs(folder, inputs)
    hours = pc.floor_temporal(table["ts"], unit="hour")
    outputs: list[str] = []
    committed = False
    try:
        written = 0
        for value in sorted(v for v in pc.unique(hours).to_pylist() if v is not None):
            hour = floor_hour(value)
            if hour < before and hour not in todo:
                raise RuntimeError(f"{folder.name}: rows of {hour} outside its planned inputs")
            part = table.filter(pc.equal(hours, pa.scalar(value, type=hours.type)))
            part = part.sort_by([("ts", "ascending"), ("id", "ascending")])
            outputs.append(_write_output(folder, part, hour))
            written += part.num_rows
        if written != table.num_rows:  # rows with a null ts cannot be placed in an hour
            raise RuntimeError(f"{folder.name}: {table.num_rows - written} row(s) without ts")
        with writer_lock(raw_dir):
            current = set(visible_names(folder))
            missing = [n for n in inputs if n not in current]
            if missing:
                report.skipped.append(f"{folder.name}: {len(missing)} input file(s) vanished")
                return report
            old = read_manifest(folder)
            manifest = Manifest(
                old.version + 1,
                tuple((set(old.files) - set(inputs)) | set(outputs)),
                tuple(set(old.superseded) | set(inputs)),
            )
            _write_manifest(folder, manifest)  # <- the commit: outputs visible, inputs not
            committed = True
            for name in inputs:
                (folder / name).unlink(missing_ok=True)
            _write_manifest(
                folder,
                Manifest(
                    manifest.version + 1,
                    manifest.files,
                    tuple(n for n in manifest.superseded if (folder / n).exists()),
                ),
            )
    finally:
        if not committed:
            for name in outputs:
                (folder / name).unlink(missing_ok=True)
    report.hours_compacted += len(todo)
    report.files_in += len(inputs)
    report.files_out += len(outputs)
    report.rows += table.num_rows
    return report


def compact(
    raw_dir: Path,
    before: datetime | None = None,
    log: Callable[[str], None] = logger.info,
) -> CompactionReport:
    """Rewrite every closed hour before ``before`` (default: the current hour) into one file.

    Idempotent: an hour that is already one compacted file is left alone. Rows of an input file
    that fall in a still-open hour are rewritten into their own file for that hour (unchanged).
    Only one compaction runs at a time per dataset (``_compact.lock``).
    """
    raw_dir = Path(raw_dir)
    before = floor_hour(before or datetime.now(UTC))
    report = CompactionReport(before)
    if not raw_dir.is_dir():
        return report
    last_day = (before - timedelta(microseconds=1)).date()
    with file_lock(raw_dir / COMPACT_LOCK):
        for day, folder in date_dirs(raw_dir):
            if day > last_day:
                continue
            report.dates_scanned += 1
            _cleanup(folder)
            hours_before = report.hours_compacted
            compact_day(raw_dir, folder, before, report)
            if report.hours_compacted != hours_before:
                log(f"compact {folder.name}: {report.hours_compacted - hours_before} hour(s)")
    return report


# ------------------------------------------------------------------------------------------------
# `marketflow compact [--before ISO]`
# ------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument(
        "--before",
        default=None,
        metavar="ISO",
        help="compact the hours before this UTC time, rounded down to the hour "
        "(default: the current hour, i.e. every closed hour)",
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
    """Handler of ``marketflow compact``: one summary line, exit 0."""
    before = parse_before(args.before)
    started = time.perf_counter()
    report = compact(settings.raw_dir, before, log=logger.info)
    print(f"{report.summary()} in {time.perf_counter() - started:.1f} s ({settings.raw_dir})")
    return 0
