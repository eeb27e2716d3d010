"""The ``raw_prices`` dataset: a Delta Lake table, written and read with ``deltalake`` (delta-rs).

Layout: ``$MARKETFLOW_DATA_DIR/raw_prices/`` holds the transaction log ``_delta_log/`` and the
data files ``date=YYYY-MM-DD/part-*.parquet`` (columns ``schema.RAW_COLUMNS``, partition column
``schema.RAW_PARTITION_COLUMN``; schema: :func:`marketflow_assets.schema.raw_table_schema`).
Any Delta reader (Spark with delta-spark, DuckDB's ``delta_scan``, Polars' ``read_delta``,
Trino) reads it; see ``docs/ARCHITECTURE.md``.

Why a table format: every guarantee the indicators rest on is the table's, not ours.

* **Snapshots.** A reader pins one table *version* (:func:`snapshot`) and lists and reads only
  that version's files. A commit landing meanwhile (a micro-batch, a compaction) changes nothing
  for it: the files it listed are immutable, and a file a compaction removed from the table stays
  on disk until ``VACUUM`` after the retention (``MARKETFLOW_RAW_RETENTION_HOURS``, >= 1 h). A
  read can never come up short.
* **Atomic, idempotent appends.** The streaming job commits each micro-batch as one transaction
  carrying an application transaction ``(app id, batch id)`` (:func:`append_batch`); a replayed
  batch finds its id committed and is skipped. A crash before the commit leaves only unreferenced
  files (invisible; ``VACUUM`` removes them), after it the whole batch.
* **Compaction** is Delta's ``OPTIMIZE`` (:mod:`marketflow_assets.compaction`): a commit that
  swaps small files for large ones, readers before it keep their version.

This is the only module that knows the storage format: the streaming sink, the indicator and
movers assets, checks, forecasts, the observation sensor, ``follow``, the spool's reconciliation
and the benchmarks all go through it. It imports neither Dagster nor Spark at module level.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from marketflow_assets.schema import (
    RAW_CHECK_COLUMNS,
    RAW_COLUMN_NAMES,
    RAW_PARTITION_COLUMN,
    raw_arrow_schema,
    raw_table_schema,
    spark_ddl,
)

if TYPE_CHECKING:  # pandas is imported where frames are built: opening the table needs none
    import pandas as pd

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Columns the checks read by default.
CHECK_COLUMNS = RAW_CHECK_COLUMNS
PARTITION_PREFIX = f"{RAW_PARTITION_COLUMN}="
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Rows per Parquet row group in the table's files: a compacted day file is in commit (≈ time)
#: order, so a reader of one hour skips the other row groups by their ``ts`` statistics.
ROW_GROUP_ROWS = 32_768
#: Table properties: a checkpoint every 100 commits (opening the table reads the newest
#: checkpoint plus at most 99 commit files, however long the history); commit files older than
#: one hour are removed at each checkpoint and compaction (delta-rs lists the whole log folder
#: when it opens a table: with one commit per 30 s poll, a longer retention makes every open
#: slower -- 6,000 files after two days); removed data files are kept for the VACUUM retention.
#: A pinned snapshot holds its file list in memory, so log cleanup never affects a reader.
CHECKPOINT_INTERVAL = 100
LOG_RETENTION = "interval 1 hours"
#: Name of the in-progress marker of a conversion from a plain Parquet directory (upgrades).
CONVERSION_MARKER = "_marketflow_conversion.json"
CONVERSION_LOCK = "_marketflow_conversion.lock"
#: Commit metadata key naming what wrote a commit (``stream``, ``convert``, ``compact``, ...).
OPERATION_KEY = "marketflow.operation"


def table_configuration(retention_hours: float) -> dict[str, str]:
    """Delta table properties of ``raw_prices`` for a VACUUM retention of ``retention_hours``."""
    minutes = max(1, int(round(retention_hours * 60)))
    return {
        "delta.checkpointInterval": str(CHECKPOINT_INTERVAL),
        "delta.logRetentionDuration": LOG_RETENTION,
        "delta.enableExpiredLogCleanup": "true",
        "delta.deletedFileRetentionDuration": f"interval {minutes} minutes",
    }


def writer_properties():
    from deltalake import WriterProperties

    return WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="SNAPPY")


def micros(ts: datetime) -> int:
    """µs since the epoch of ``ts`` (naive means UTC)."""
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
    return (ts - _EPOCH) // timedelta(microseconds=1)


to_micros = micros


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def day_dir(raw_dir: Path, day: date | str) -> Path:
    """The directory of one UTC date's data files."""
    text = day if isinstance(day, str) else day.isoformat()
    return Path(raw_dir) / f"{PARTITION_PREFIX}{text}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (created with its directory when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------
# Opening the table (and converting a plain Parquet directory on first use)
# ------------------------------------------------------------------------------------------------
def is_table(raw_dir: Path) -> bool:
    from deltalake import DeltaTable

    raw_dir = Path(raw_dir)
    return (raw_dir / "_delta_log").is_dir() and DeltaTable.is_deltatable(str(raw_dir))


def _legacy_files(raw_dir: Path) -> list[Path]:
    """Parquet files of a plain hive-partitioned directory (no ``_delta_log``)."""
    out = []
    for folder in sorted(Path(raw_dir).glob(f"{PARTITION_PREFIX}*")):
        if folder.is_dir():
            out += sorted(p for p in folder.iterdir() if p.name.endswith(".parquet"))
    return out


def open_table(raw_dir: Path, version: int | None = None, create: bool = False):
    """The ``raw_prices`` DeltaTable at ``version`` (default: the newest), or None when there is
    no table and ``create`` is false. A plain Parquet directory is converted first (upgrades)."""
    from deltalake import DeltaTable

    raw_dir = Path(raw_dir)
    if (raw_dir / CONVERSION_MARKER).exists() or (
        not is_table(raw_dir) and raw_dir.is_dir() and _legacy_files(raw_dir)
    ):
        convert_legacy(raw_dir)
    if not is_table(raw_dir):
        if not create:
            return None
        _create(raw_dir)
    if version is None:
        return DeltaTable(str(raw_dir))
    return DeltaTable(str(raw_dir), version=version)


def _create(raw_dir: Path) -> None:
    from deltalake import DeltaTable

    from marketflow_assets.settings import load_raw_retention_hours

    raw_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(raw_dir / CONVERSION_LOCK):
        if is_table(raw_dir):
            return
        DeltaTable.create(
            str(raw_dir),
            raw_table_schema(),
            mode="ignore",
            partition_by=[RAW_PARTITION_COLUMN],
            name="raw_prices",
            description="CoinGecko /coins/markets snapshots, one row per (id, ts)",
            configuration=table_configuration(load_raw_retention_hours()),
        )
        logger.info("created the raw_prices Delta table at %s", raw_dir)


def _settled_legacy_visible(folder: Path, names: list[str]) -> list[str]:
    """Files of one ``date=`` directory that the pre-Delta compaction manifest made visible
    (``_compaction.json``: compacted ``cpart-`` files count only when listed in ``files``; inputs
    listed in ``superseded`` were replaced). Without a manifest every file is visible."""
    try:
        manifest = json.loads((folder / "_compaction.json").read_text())
    except (FileNotFoundError, ValueError):
        manifest = {}
    live = set(manifest.get("files", ()))
    gone = set(manifest.get("superseded", ()))
    out = []
    for name in names:
        if name.startswith((".", "_")):
            continue
        if name.startswith("cpart-"):
            if name in live:
                out.append(name)
        elif name not in gone:
            out.append(name)
    return out


def _legacy_table(path: Path):
    """One legacy file as a table in the raw schema (``ts`` truncated to µs, date from ``ts``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    schema = raw_arrow_schema()
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table[f.name].cast(f.type, safe=False))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    out = pa.Table.from_arrays(columns, schema=schema)
    out = out.filter(pc.is_valid(out["ts"]))
    day = pc.cast(pc.cast(out["ts"], pa.timestamp("us", tz="UTC")), pa.date32())
    return out.append_column(RAW_PARTITION_COLUMN, day)


def convert_legacy(raw_dir: Path, log: Callable[[str], None] = logger.warning) -> int:
    """Convert a plain hive-partitioned Parquet ``raw_prices/`` into the Delta table, in place.

    The visible rows (per the old compaction manifest, if any) are rewritten into the table in
    ONE commit (at most one row per (id, ts) kept), then the old files are deleted. A marker file
    names the old files first, so a crash at any point resumes: before the commit, the conversion
    starts over from the same list; after it, only the deletion is finished. Returns the rows
    converted (0 when there was nothing to do).
    """
    import pyarrow as pa

    from marketflow_assets.settings import load_raw_retention_hours

    raw_dir = Path(raw_dir)
    marker = raw_dir / CONVERSION_MARKER
    with file_lock(raw_dir / CONVERSION_LOCK):
        if marker.exists():
            plan = json.loads(marker.read_text())
        elif is_table(raw_dir) or not _legacy_files(raw_dir):
            return 0
        else:
            files = _legacy_files(raw_dir)
            visible = []
            for folder in sorted({f.parent for f in files}):
                names = [f.name for f in files if f.parent == folder]
                visible += [
                    (folder / n).relative_to(raw_dir).as_posix()
                    for n in _settled_legacy_visible(folder, names)
                ]
            plan = {
                "visible": sorted(visible),
                "remove": sorted(f.relative_to(raw_dir).as_posix() for f in files),
            }
            tmp = marker.with_name(f".{marker.name}.tmp")
            tmp.write_text(json.dumps(plan))
            os.replace(tmp, marker)
        rows = 0
        if not is_table(raw_dir):
            from deltalake import write_deltalake

            started = time.perf_counter()
            tables = [_legacy_table(raw_dir / name) for name in plan["visible"]]
            tables = [t for t in tables if t.num_rows]
            data = (
                pa.concat_tables(tables)
                if tables
                else pa.Table.from_pylist([], schema=raw_table_schema())
            )
            data = dedup_keys(data)
            rows = data.num_rows
            write_deltalake(
                str(raw_dir),
                data,
                mode="append",
                partition_by=[RAW_PARTITION_COLUMN],
                name="raw_prices",
                configuration=table_configuration(load_raw_retention_hours()),
                writer_properties=writer_properties(),
                commit_properties=commit_properties(
                    "convert", {"legacy_files": len(plan["visible"])}
                ),
            )
            seconds = time.perf_counter() - started
            log(
                f"raw_prices: converted the plain Parquet dataset at {raw_dir} into a Delta table "
                f"({len(plan['visible'])} file(s), {rows} row(s), {seconds:.1f} s)"
            )
        for name in plan["remove"]:
            (raw_dir / name).unlink(missing_ok=True)
        for folder in raw_dir.glob(f"{PARTITION_PREFIX}*"):
            for leftover in ("_compaction.json",):
                (folder / leftover).unlink(missing_ok=True)
        for leftover in ("_writer.lock", "_compact.lock"):
            (raw_dir / leftover).unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        return rows


def commit_properties(operation: str, extra: dict | None = None, app=None):
    from deltalake import CommitProperties, Transaction

    meta = {OPERATION_KEY: operation}
    for key, value in (extra or {}).items():
        meta[f"marketflow.{key}"] = str(value)
    txns = None if app is None else [Transaction(app_id=app[0], version=int(app[1]))]
    return CommitProperties(custom_metadata=meta, app_transactions=txns)


# ------------------------------------------------------------------------------------------------
# Snapshots
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawFile:
    """One data file of a table version (immutable: a Delta data file is never rewritten)."""

    path: Path
    day: date
    min_ts: datetime | None  # from the file's statistics in the log
    max_ts: datetime | None
    mtime_ns: int
    size: int
    rows: int | None = None


@dataclass
class RawSnapshot:
    """One pinned version of ``raw_prices``: every list and read goes through the same version.

    ``version`` is None when there is no table yet (an empty snapshot). ``os.fspath(snapshot)`` is
    the table's directory, so a snapshot can stand where a dataset path is expected.
    """

    root: Path
    version: int | None
    files_all: list[RawFile] = field(default_factory=list)

    def __fspath__(self) -> str:
        return str(self.root)

    def files(self, start: datetime | None = None, end: datetime | None = None) -> list[RawFile]:
        """Files of this version that may hold rows with ``ts`` in ``[start, end)`` (pruned by
        partition date and by each file's min/max ``ts`` statistics)."""
        out = []
        for f in self.files_all:
            if start is not None and f.day < start.astimezone(UTC).date():
                continue
            if end is not None and f.day > (end.astimezone(UTC) - timedelta(microseconds=1)).date():
                continue
            if f.min_ts is not None and f.max_ts is not None:
                if (end is not None and f.min_ts >= end) or (
                    start is not None and f.max_ts < start
                ):
                    continue
            out.append(f)
        return out

    def days(self) -> list[date]:
        return sorted({f.day for f in self.files_all if f.rows != 0})

    def row_count(self, files: list[RawFile] | None = None) -> int:
        return sum(raw_file_rows(f) for f in (self.files_all if files is None else files))

    def read(
        self, start: datetime, end: datetime, columns: tuple[str, ...] = CHECK_COLUMNS
    ) -> pd.DataFrame:
        """Rows with ``start <= ts < end`` of this version (``ts`` as UTC timestamps)."""
        df = read_files([f.path for f in self.files(start, end)], columns, start, end)
        if not len(df):
            return df
        return df[(df["ts"] >= start) & (df["ts"] < end)].reset_index(drop=True)


def _file_from_action(root: Path, row: dict) -> RawFile:
    lo, hi = row.get("min.ts"), row.get("max.ts")
    day = row.get(f"partition.{RAW_PARTITION_COLUMN}")
    if isinstance(day, str):
        day = date.fromisoformat(day)
    return RawFile(
        path=root / row["path"],
        day=day,
        min_ts=None if lo is None else _as_utc(lo),
        max_ts=None if hi is None else _as_utc(hi),
        mtime_ns=int(row.get("modification_time") or 0) * 1_000_000,
        size=int(row.get("size_bytes") or 0),
        rows=None if row.get("num_records") is None else int(row["num_records"]),
    )


def snapshot_of(table, root: Path) -> RawSnapshot:
    """The :class:`RawSnapshot` of an opened DeltaTable version."""
    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=True))
    wanted = [
        c
        for c in (
            "path",
            "size_bytes",
            "modification_time",
            "num_records",
            "min.ts",
            "max.ts",
            f"partition.{RAW_PARTITION_COLUMN}",
        )
        if c in actions.column_names
    ]
    rows = actions.select(wanted).to_pylist()
    files = sorted((_file_from_action(root, r) for r in rows), key=lambda f: str(f.path))
    return RawSnapshot(root, table.version(), files)


def snapshot(raw_dir: Path | RawSnapshot, version: int | None = None) -> RawSnapshot:
    """Pin a version of the table (default: the newest); ``raw_dir`` may already be a snapshot
    (returned as it is). An empty snapshot when there is no table."""
    if isinstance(raw_dir, RawSnapshot):
        return raw_dir
    root = Path(raw_dir)
    table = open_table(root, version)
    if table is None:
        return RawSnapshot(root, None, [])
    return snapshot_of(table, root)


def has_files(raw_dir: Path) -> bool:
    """True when the newest version of the table holds a data file (rows were committed); cheap:
    neither pyarrow nor pandas is loaded (``marketflow up``'s readiness probe)."""
    table = open_table(Path(raw_dir))
    return table is not None and bool(table.file_uris())


def log_marker(raw_dir: Path) -> int | None:
    """A mark of the table's transaction log that changes when a commit lands: the modification
    time (ns) of ``_delta_log/`` - every commit file created in it moves it. A few microseconds,
    where opening the table and listing its files takes milliseconds: pollers list only when
    it moved. None without a log."""
    try:
        return os.stat(Path(raw_dir) / "_delta_log").st_mtime_ns
    except FileNotFoundError:
        return None


def table_version(raw_dir: Path) -> int | None:
    """The newest committed version of the table (None when there is no table)."""
    table = open_table(Path(raw_dir))
    return None if table is None else table.version()


# ------------------------------------------------------------------------------------------------
# Convenience readers (each pins one snapshot for its list + read)
# ------------------------------------------------------------------------------------------------
def list_raw_files(
    raw_dir: Path | RawSnapshot, start: datetime | None = None, end: datetime | None = None
) -> list[RawFile]:
    """Files of the (pinned, else newest) version that may hold rows with ``ts`` in
    ``[start, end)`` (all if None)."""
    return snapshot(raw_dir).files(start, end)


def raw_days(raw_dir: Path | RawSnapshot) -> list[date]:
    """UTC dates with data in the table."""
    return snapshot(raw_dir).days()


def raw_file_rows(raw_file: RawFile) -> int:
    """Rows of one data file: from the log's statistics, else its Parquet footer."""
    if raw_file.rows is not None:
        return raw_file.rows
    import pyarrow.parquet as pq

    return pq.read_metadata(raw_file.path).num_rows


def file_rows(path: Path) -> int:
    """Rows of one Parquet file from its footer (0 when unreadable)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):
        return 0


def raw_row_count(files: list[RawFile], stop_above: int | None = None) -> int:
    """Rows in ``files``; counting stops once the total exceeds ``stop_above``."""
    total = 0
    for raw_file in files:
        total += raw_file_rows(raw_file)
        if stop_above is not None and total > stop_above:
            break
    return total


def file_ts_range(raw_file: RawFile) -> tuple[datetime, datetime] | None:
    """(min, max) ``ts`` of one file: from the log's statistics, else its data."""
    if raw_file.min_ts is not None and raw_file.max_ts is not None:
        return raw_file.min_ts, raw_file.max_ts
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        column = pq.read_table(raw_file.path, columns=["ts"]).column("ts")
    except (OSError, ValueError, KeyError):
        return None
    if column.null_count == len(column):
        return None
    bounds = pc.min_max(column).as_py()
    return _as_utc(bounds["min"]), _as_utc(bounds["max"])


def raw_time_range(
    raw_dir: Path | RawSnapshot, files: list[RawFile] | None = None
) -> tuple[datetime, datetime] | None:
    """(oldest, newest) ``ts`` in the table (or in ``files``), None when there is no row."""
    lo = hi = None
    for raw_file in snapshot(raw_dir).files_all if files is None else files:
        bounds = file_ts_range(raw_file)
        if bounds is None:
            continue
        lo = bounds[0] if lo is None else min(lo, bounds[0])
        hi = bounds[1] if hi is None else max(hi, bounds[1])
    return None if lo is None else (lo, hi)


def newest_raw_ts(raw_dir: Path | RawSnapshot) -> datetime | None:
    """Newest ``ts`` in the table (from the files' statistics)."""
    bounds = raw_time_range(raw_dir)
    return None if bounds is None else bounds[1]


def oldest_raw_ts(raw_dir: Path | RawSnapshot) -> datetime | None:
    """Oldest ``ts`` in the table (from the files' statistics)."""
    bounds = raw_time_range(raw_dir)
    return None if bounds is None else bounds[0]


def _to_utc(series: pd.Series) -> pd.Series:
    import pandas as pd

    ts = pd.to_datetime(series)
    return ts.dt.tz_localize(UTC) if ts.dt.tz is None else ts.dt.tz_convert(UTC)


def _ts_filter(start: datetime | None, end: datetime | None):
    import pandas as pd
    import pyarrow as pa

    ts_type = raw_arrow_schema().field("ts").type
    filters = []
    if start is not None:
        filters.append(("ts", ">=", pa.scalar(pd.Timestamp(start), type=ts_type)))
    if end is not None:
        filters.append(("ts", "<", pa.scalar(pd.Timestamp(end), type=ts_type)))
    return filters or None


def read_files(
    files: list[Path],
    columns: tuple[str, ...] = CHECK_COLUMNS,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Read ``columns`` of ``files`` (of one snapshot) into one DataFrame, ``ts`` as UTC; with
    ``start``/``end``, row groups outside ``[start, end)`` are skipped (rows inside a kept row
    group are returned as they are: filter them)."""
    import pandas as pd
    import pyarrow.parquet as pq

    filters = _ts_filter(start, end)
    frames = [pq.read_table(f, columns=list(columns), filters=filters).to_pandas() for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    df = pd.concat(frames, ignore_index=True)
    if "ts" in df:
        df["ts"] = _to_utc(df["ts"])
    return df


def read_window(
    raw_dir: Path | RawSnapshot,
    start: datetime,
    end: datetime,
    columns: tuple[str, ...] = CHECK_COLUMNS,
) -> pd.DataFrame:
    """Rows with ``start <= ts < end`` of one pinned version."""
    return retry_vanished(lambda: snapshot(raw_dir).read(start, end, columns))


def read_rows_local(
    files: list[RawFile], start: datetime, end: datetime, columns: tuple[str, ...]
) -> pd.DataFrame:
    """``columns`` of the rows of ``files`` with ``ts`` in ``[start, end)`` and a non-NULL
    ``current_price``, read in this process with pyarrow; ``ts`` is tz-aware UTC (µs)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = raw_arrow_schema()
    target = pa.schema([schema.field(name) for name in columns])
    filters = _ts_filter(start, end)
    tables = []
    for raw_file in files:
        table = pq.read_table(raw_file.path, columns=list(columns), filters=filters)
        table = table.select(list(columns)).cast(target, safe=False)
        tables.append(table.filter(pc.is_valid(table["current_price"])))
    if not tables:
        return pa.Table.from_pylist([], schema=target).to_pandas()
    return pa.concat_tables(tables).to_pandas()


def read_rows_spark(
    spark, files: list[RawFile], start: datetime, end: datetime, columns: tuple[str, ...]
):
    """Spark DataFrame of ``columns`` of the rows of ``files`` (one snapshot's file list) with
    ``ts`` in ``[start, end)`` and a non-NULL ``current_price``; None when ``files`` is empty."""
    import pandas as pd
    import pyspark.sql.functions as F

    from marketflow_assets.schema import RAW_COLUMNS

    if not files:
        return None
    ddl = spark_ddl(tuple(c for c in RAW_COLUMNS if c[0] in columns))
    frame = spark.read.schema(ddl).parquet(*(str(f.path) for f in files))
    return frame.where(
        (F.col("ts") >= F.lit(pd.Timestamp(start).to_pydatetime()))
        & (F.col("ts") < F.lit(pd.Timestamp(end).to_pydatetime()))
        & F.col("current_price").isNotNull()
    ).select(*columns)


def _vanished(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    return "FileNotFoundException" in text or "does not exist" in text or "FILE_NOT_EXIST" in text


def retry_vanished(fn: Callable[[], T], attempts: int = 3) -> T:
    """Call ``fn`` (which pins a snapshot, lists *and* reads) again when a file it listed is gone:
    only possible when the snapshot is older than the VACUUM retention; a new call pins the
    newest version. Never returns a partial read."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not _vanished(exc):
                raise
            logger.warning("a raw file of a pinned version was vacuumed; reading a newer version")
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------
# Writing: one transaction per micro-batch
# ------------------------------------------------------------------------------------------------
def dedup_keys(table):
    """``table`` with at most one row per (id, ts): the first occurrence is kept."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table
    idx = pa.array(range(table.num_rows), pa.int64())
    keyed = pa.table({"id": table["id"], "ts": table["ts"], "_i": idx})
    first = keyed.group_by(["id", "ts"], use_threads=False).aggregate([("_i", "min")])
    keep = pc.is_in(idx, value_set=first["_i_min"])
    return table.filter(keep)


def existing_keys(snap: RawSnapshot, table) -> set[tuple[str, int]]:
    """(id, ts µs) of the rows of ``snap`` that ``table``'s rows could duplicate (only the files
    whose date and ts range overlap ``table``'s are read)."""
    import pyarrow.compute as pc

    if table.num_rows == 0 or snap.version is None:
        return set()
    bounds = pc.min_max(table["ts"]).as_py()
    start, end = _as_utc(bounds["min"]), _as_utc(bounds["max"]) + timedelta(microseconds=1)
    files = snap.files(start, end)
    if not files:
        return set()
    import pyarrow as pa
    import pyarrow.parquet as pq

    filters = _ts_filter(start, end)
    out: set[tuple[str, int]] = set()
    for f in files:
        part = pq.read_table(f.path, columns=["id", "ts"], filters=filters)
        stamps = part["ts"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
        out.update(zip(part["id"].to_pylist(), stamps, strict=True))
    return out


@dataclass
class AppendResult:
    version: int | None  # the version committed (None: nothing new or already committed)
    rows_written: int
    duplicates: int
    skipped: bool = False  # the batch id was already committed (a replay)


_WRITERS: dict[str, object] = {}


def _writer_table(raw_dir: Path):
    """The writer's DeltaTable of ``raw_dir``, kept open between commits and brought up to date
    with ``update_incremental`` (reads only the new commits; reopening costs a log listing and
    a checkpoint read per micro-batch)."""
    key = str(Path(raw_dir).resolve())
    table = _WRITERS.get(key)
    if table is None or not is_table(raw_dir):
        table = open_table(raw_dir, create=True)
        _WRITERS[key] = table
    else:
        table.update_incremental()
    return table


def committed_batch(raw_dir: Path, app_id: str) -> int | None:
    """The newest batch id committed under ``app_id`` (an application transaction)."""
    table = open_table(Path(raw_dir))
    return None if table is None else table.transaction_version(app_id)


def append_batch(
    raw_dir: Path,
    rows,
    app_id: str | None = None,
    batch_id: int | None = None,
    metadata: dict | None = None,
    operation: str = "stream",
) -> AppendResult:
    """Append ``rows`` (pyarrow table in :func:`raw_table_schema`) as ONE commit carrying the
    application transaction ``(app_id, batch_id)``; exactly once per batch id.

    A batch id already committed under ``app_id`` is skipped. Rows whose (id, ts) the table (or
    the batch itself) already holds are dropped, so replays and producer retries never duplicate
    a row. An empty remainder still commits the transaction (the batch counts as done).
    Without ``app_id`` (tools, tests, benchmarks) the rows are appended once, deduplicated the
    same way (``operation`` names the commit: ``append``).
    """
    from deltalake import write_deltalake

    raw_dir = Path(raw_dir)
    table = _writer_table(raw_dir)
    if app_id is not None:
        done = table.transaction_version(app_id)
        if done is not None and done >= batch_id:
            return AppendResult(None, 0, 0, skipped=True)
    rows = rows.select(list(raw_table_schema().names)).cast(raw_table_schema(), safe=False)
    unique = dedup_keys(rows)
    seen = existing_keys(snapshot_of(table, raw_dir), unique)
    if seen:
        import pyarrow as pa

        stamps = unique["ts"].cast(pa.int64()).to_pylist()
        keep = [(i, t) not in seen for i, t in zip(unique["id"].to_pylist(), stamps, strict=True)]
        unique = unique.filter(pa.array(keep))
    extra = dict(metadata or {})
    extra["rows"] = unique.num_rows
    if batch_id is not None:
        extra["batch_id"] = batch_id
    if unique.num_rows:
        import pyarrow.compute as pc

        bounds = pc.min_max(unique["ts"]).as_py()
        extra.update(ts_min=bounds["min"].isoformat(), ts_max=bounds["max"].isoformat())
    write_deltalake(
        table,
        unique,
        mode="append",
        partition_by=[RAW_PARTITION_COLUMN],
        writer_properties=writer_properties(),
        commit_properties=commit_properties(
            operation, extra, app=None if app_id is None else (app_id, batch_id)
        ),
    )
    # the table object now stands at the version this write committed (not a later one)
    return AppendResult(table.version(), unique.num_rows, rows.num_rows - unique.num_rows)


def reject_table_schema():
    """pyarrow schema of the ``raw_prices_rejects`` Delta table (``schema.REJECT_COLUMNS``)."""
    import pyarrow as pa

    from marketflow_assets.schema import REJECT_COLUMNS

    types = {"string": pa.string(), "int": pa.int32(), "long": pa.int64()}
    return pa.schema(
        [
            (name, pa.timestamp("us", tz="UTC") if kind == "timestamp" else types[kind])
            for name, kind in REJECT_COLUMNS
        ]
    )


def append_rejects(rejects_dir: Path, rows, app_id: str, batch_id: int) -> bool:
    """Append rejected messages to the ``raw_prices_rejects`` Delta table, once per batch id
    (the same application transaction as :func:`append_batch`); False when already there."""
    from deltalake import DeltaTable, write_deltalake

    rejects_dir = Path(rejects_dir)
    if is_table(rejects_dir):
        done = DeltaTable(str(rejects_dir)).transaction_version(app_id)
        if done is not None and done >= batch_id:
            return False
    rows = rows.select(reject_table_schema().names).cast(reject_table_schema(), safe=False)
    write_deltalake(
        str(rejects_dir),
        rows,
        mode="append",
        name="raw_prices_rejects",
        commit_properties=commit_properties("stream", {"batch_id": batch_id}, (app_id, batch_id)),
    )
    return True


def read_rejects(rejects_dir: Path) -> pd.DataFrame:
    """All rejected messages (newest table version); empty when there is no table."""
    import pandas as pd
    from deltalake import DeltaTable

    if not is_table(Path(rejects_dir)):
        return pd.DataFrame(columns=reject_table_schema().names)
    return DeltaTable(str(rejects_dir)).to_pandas()


def append_frame(raw_dir: Path, df: pd.DataFrame, operation: str = "append") -> AppendResult:
    """Append the rows of ``df`` (the raw columns; ``date`` derived) as one commit."""
    return append_batch(raw_dir, raw_table_from_frame(df), operation=operation)


def raw_table_from_frame(df: pd.DataFrame):
    """A pyarrow table in the table schema from a DataFrame holding the raw columns (``date``
    derived from ``ts``; missing optional columns NULL)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = raw_arrow_schema()
    arrays = []
    for f in schema:
        if f.name in df:
            arrays.append(pa.array(df[f.name], from_pandas=True).cast(f.type, safe=False))
        else:
            arrays.append(pa.nulls(len(df), f.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    return table.append_column(RAW_PARTITION_COLUMN, pc.cast(table["ts"], pa.date32()))


__all__ = [
    "RAW_COLUMN_NAMES",
    "RawFile",
    "RawSnapshot",
    "append_batch",
    "snapshot",
]
