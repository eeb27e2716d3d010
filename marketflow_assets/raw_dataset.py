"""The raw Parquet dataset written by the Spark streaming job: naming, listing, pruning, reading.

Layout: ``$MARKETFLOW_DATA_DIR/raw_prices/date=YYYY-MM-DD/*.parquet`` (columns
``schema.RAW_COLUMNS``, hive partition column ``schema.RAW_PARTITION_COLUMN``). The streaming
job (``spark_streaming/kafka_streaming.py``) names its files
``part-<sink id>-b<batch>-<k>-<min ts µs>-<max ts µs>.parquet`` (:func:`streaming_file_name`), so
readers prune by day directory and, inside a day, by the time range in the name: a refresh of one
hour opens only that hour's files however long the history is. Files named otherwise (written by
other tools) are always included and filtered by ``ts`` when read. Hidden files (``.``/``_``
prefixes: in-progress writes) are never listed.

This is the only module that knows the layout: the Spark sink, the ``raw_prices`` asset and its
checks, the observation sensor, the schedule and ``marketflow refresh`` all go through it. It
imports neither Dagster nor Spark at module level (the streaming job imports it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from marketflow_assets.schema import (
    RAW_CHECK_COLUMNS,
    RAW_PARTITION_COLUMN,
    raw_arrow_schema,
    spark_ddl,
)

#: Name of a file written by the streaming job (min/max ``ts`` of the file, in µs since epoch).
STREAMING_FILE = re.compile(r"^part-[0-9a-f]+-b\d+-\d+-(\d+)-(\d+)\.parquet$")
#: Columns the checks read by default.
CHECK_COLUMNS = RAW_CHECK_COLUMNS


def streaming_file_prefix(sink_id: str, batch_id: int) -> str:
    """Prefix of every file (raw and rejects) that batch ``batch_id`` of sink ``sink_id`` writes."""
    return f"part-{sink_id}-b{batch_id:010d}-"


def streaming_file_name(sink_id: str, batch_id: int, k: int, min_us: int, max_us: int) -> str:
    """File name of the ``k``-th raw file of a batch holding ``ts`` in ``[min_us, max_us]`` (µs);
    matches :data:`STREAMING_FILE`."""
    return f"{streaming_file_prefix(sink_id, batch_id)}{k:03d}-{min_us}-{max_us}.parquet"


def to_micros(ts: datetime) -> int:
    """µs since the epoch of ``ts`` (naive means UTC), as used in streaming file names."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1_000_000)


def day_dir(raw_dir: Path, day: date | str) -> Path:
    """The hive directory of one UTC date."""
    text = day if isinstance(day, str) else day.isoformat()
    return Path(raw_dir) / f"{RAW_PARTITION_COLUMN}={text}"


@dataclass(frozen=True)
class RawFile:
    path: Path
    day: date
    min_ts: datetime | None  # from the streaming job's file name, when it follows it
    max_ts: datetime | None
    mtime_ns: int
    size: int


def _micros(value: str | int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value))


def _day_dirs(raw_dir: Path) -> list[tuple[date, Path]]:
    out = []
    if not raw_dir.is_dir():
        return out
    prefix = f"{RAW_PARTITION_COLUMN}="
    for entry in raw_dir.iterdir():
        if entry.is_dir() and entry.name.startswith(prefix):
            try:
                out.append((date.fromisoformat(entry.name[len(prefix) :]), entry))
            except ValueError:
                continue
    return sorted(out)


def raw_days(raw_dir: Path) -> list[date]:
    """UTC dates present in the dataset (one per ``date=`` directory)."""
    return [day for day, _ in _day_dirs(Path(raw_dir))]


def list_raw_files(
    raw_dir: Path, start: datetime | None = None, end: datetime | None = None
) -> list[RawFile]:
    """Visible Parquet files that may hold rows with ``ts`` in ``[start, end)`` (all if None)."""
    files = []
    for day, folder in _day_dirs(Path(raw_dir)):
        if start is not None and day < start.astimezone(UTC).date():
            continue
        if end is not None and day > (end.astimezone(UTC) - timedelta(microseconds=1)).date():
            continue
        files.extend(_scan(folder, day, start, end))
    return sorted(files, key=lambda f: str(f.path))


def day_files(raw_dir: Path, day: date | str, min_us: int, max_us: int) -> list[Path]:
    """Visible files of one ``date=`` directory that may hold a ``ts`` in ``[min_us, max_us]``
    (µs; the streaming sink's duplicate check)."""
    folder = day_dir(raw_dir, day)
    if not folder.is_dir():
        return []
    day = date.fromisoformat(day) if isinstance(day, str) else day
    start, end = _micros(min_us), _micros(max_us + 1)
    return sorted((f.path for f in _scan(folder, day, start, end)), key=str)


def _scan(folder: Path, day: date, start: datetime | None, end: datetime | None) -> list[RawFile]:
    files = []
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith((".", "_")) or not name.endswith(".parquet"):
            continue
        match = STREAMING_FILE.match(name)
        lo = hi = None
        if match:
            lo, hi = _micros(match.group(1)), _micros(match.group(2))
            if (end is not None and lo >= end) or (start is not None and hi < start):
                continue
        try:
            stat = entry.stat()
        except FileNotFoundError:  # removed meanwhile
            continue
        files.append(RawFile(entry, day, lo, hi, stat.st_mtime_ns, stat.st_size))
    return files


def file_rows(path: Path) -> int:
    """Rows of one Parquet file from its footer (0 when unreadable)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):
        return 0


def raw_row_count(files: list[RawFile], stop_above: int | None = None) -> int:
    """Rows in ``files`` according to their Parquet footers (no data is read); counting stops
    as soon as the total exceeds ``stop_above`` (a backfill need not open every footer)."""
    import pyarrow.parquet as pq

    total = 0
    for raw_file in files:
        total += pq.read_metadata(raw_file.path).num_rows
        if stop_above is not None and total > stop_above:
            break
    return total


def file_ts_range(raw_file: RawFile) -> tuple[datetime, datetime] | None:
    """(min, max) ``ts`` of one file: from its name, else Parquet statistics, else its data."""
    if raw_file.min_ts is not None and raw_file.max_ts is not None:
        return raw_file.min_ts, raw_file.max_ts
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(raw_file.path).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if "ts" in names and meta.num_row_groups:
            idx = names.index("ts")
            lows, highs = [], []
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(idx).statistics
                if stats is None or not stats.has_min_max:
                    break
                lows.append(stats.min)
                highs.append(stats.max)
            else:
                if lows and all(isinstance(v, datetime) for v in lows + highs):
                    return _as_utc(min(lows)), _as_utc(max(highs))
        column = pq.read_table(raw_file.path, columns=["ts"]).column("ts")
    except (OSError, ValueError, KeyError):  # unreadable or foreign file: ignore it here
        return None
    if column.null_count == len(column):
        return None
    bounds = pc.min_max(column).as_py()
    return _as_utc(bounds["min"]), _as_utc(bounds["max"])


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def raw_time_range(
    raw_dir: Path, files: list[RawFile] | None = None
) -> tuple[datetime, datetime] | None:
    """(oldest, newest) ``ts`` in the dataset (or in ``files``), None when there is no row."""
    lo = hi = None
    for raw_file in list_raw_files(raw_dir) if files is None else files:
        bounds = file_ts_range(raw_file)
        if bounds is None:
            continue
        lo = bounds[0] if lo is None else min(lo, bounds[0])
        hi = bounds[1] if hi is None else max(hi, bounds[1])
    return None if lo is None else (lo, hi)


# ------------------------------------------------------------------------------------------
# Reading rows
# ------------------------------------------------------------------------------------------
def _to_utc(series: pd.Series) -> pd.Series:
    ts = pd.to_datetime(series)
    return ts.dt.tz_localize(UTC) if ts.dt.tz is None else ts.dt.tz_convert(UTC)


def read_files(files: list[Path], columns: tuple[str, ...] = CHECK_COLUMNS) -> pd.DataFrame:
    """Read ``columns`` of ``files`` into one DataFrame with ``ts`` as UTC timestamps."""
    import pyarrow.parquet as pq

    frames = [pq.read_table(f, columns=list(columns)).to_pandas() for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    df = pd.concat(frames, ignore_index=True)
    if "ts" in df:
        df["ts"] = _to_utc(df["ts"])
    return df


def newest_raw_ts(raw_dir: Path) -> datetime | None:
    """Newest ``ts`` in the dataset, from the newest non-empty ``date=`` partition.

    Files named by the streaming job carry their max ``ts`` in the name (no read); other files
    are read (``ts`` column only).
    """
    from datetime import time

    for day in reversed(raw_days(raw_dir)):
        start = datetime.combine(day, time(), UTC)
        files = list_raw_files(raw_dir, start, start + timedelta(days=1))
        newest = [f.max_ts for f in files if f.max_ts is not None]
        df = read_files([f.path for f in files if f.max_ts is None], columns=("ts",))
        if len(df) and df["ts"].notna().any():
            newest.append(df["ts"].max().to_pydatetime())
        if newest:
            return max(newest)
    return None


def read_window(
    raw_dir: Path, start: datetime, end: datetime, columns: tuple[str, ...] = CHECK_COLUMNS
) -> pd.DataFrame:
    """Rows with ``start <= ts < end`` (opens only files that may hold such rows)."""
    df = read_files([f.path for f in list_raw_files(raw_dir, start, end)], columns)
    if not len(df):
        return df
    return df[(df["ts"] >= start) & (df["ts"] < end)].reset_index(drop=True)


def read_rows_local(
    files: list[RawFile], start: datetime, end: datetime, columns: tuple[str, ...]
) -> pd.DataFrame:
    """``columns`` of the rows of ``files`` with ``ts`` in ``[start, end)`` and a non-NULL
    ``current_price``, read in this process with pyarrow and cast to the dataset schema; ``ts``
    becomes tz-aware UTC in microseconds (nanosecond files truncated, as on Spark)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = raw_arrow_schema()
    target = pa.schema([schema.field(name) for name in columns])
    lo = pa.scalar(pd.Timestamp(start), type=target.field("ts").type)
    stop = pa.scalar(pd.Timestamp(end), type=target.field("ts").type)
    tables = []
    for raw_file in files:
        table = pq.read_table(raw_file.path, columns=list(columns))
        table = table.select(list(columns)).cast(target, safe=False)
        keep = pc.and_(
            pc.and_(pc.greater_equal(table["ts"], lo), pc.less(table["ts"], stop)),
            pc.is_valid(table["current_price"]),
        )
        tables.append(table.filter(keep))
    return pa.concat_tables(tables).to_pandas()


def _has_nanosecond_ts(path: Path) -> bool:
    """True when the file stores ``ts`` as TIMESTAMP(NANOS) (pandas' default), which Spark's
    Parquet reader rejects as a timestamp."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        ts_type = pq.read_schema(path).field("ts").type
    except (OSError, KeyError, ValueError):
        return False
    return pa.types.is_timestamp(ts_type) and ts_type.unit == "ns"


def read_rows_spark(
    spark, files: list[RawFile], start: datetime, end: datetime, columns: tuple[str, ...]
):
    """Spark DataFrame of ``columns`` of the rows of ``files`` with ``ts`` in ``[start, end)``
    and a non-NULL ``current_price``; None when ``files`` is empty.

    Files written by other tools with nanosecond timestamps are read as integers
    (``spark.sql.legacy.parquet.nanosAsLong``) and converted to microseconds.
    """
    import pyspark.sql.functions as F

    from marketflow_assets.schema import RAW_COLUMNS

    if not files:
        return None
    ddl = spark_ddl(tuple(c for c in RAW_COLUMNS if c[0] in columns))
    nanos = [f for f in files if f.min_ts is None and _has_nanosecond_ts(f.path)]
    micros = [f for f in files if f not in nanos]
    frames = []
    if micros:
        frames.append(spark.read.schema(ddl).parquet(*(str(f.path) for f in micros)))
    if nanos:
        spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
        frame = spark.read.schema(ddl.replace("`ts` TIMESTAMP", "`ts` BIGINT")).parquet(
            *(str(f.path) for f in nanos)
        )
        frames.append(frame.withColumn("ts", F.timestamp_micros(F.floor(F.col("ts") / 1000))))
    frame = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    return frame.where(
        (F.col("ts") >= F.lit(pd.Timestamp(start).to_pydatetime()))
        & (F.col("ts") < F.lit(pd.Timestamp(end).to_pydatetime()))
        & F.col("current_price").isNotNull()
    ).select(*columns)


def oldest_raw_ts(raw_dir: Path) -> datetime | None:
    """Oldest ``ts`` in the dataset, from the oldest non-empty ``date=`` partition (streaming
    files: from their names; other files: their ``ts`` column)."""
    from datetime import time

    for day in raw_days(raw_dir):
        start = datetime.combine(day, time(), UTC)
        files = list_raw_files(raw_dir, start, start + timedelta(days=1))
        oldest = [f.min_ts for f in files if f.min_ts is not None]
        df = read_files([f.path for f in files if f.min_ts is None], columns=("ts",))
        if len(df) and df["ts"].notna().any():
            oldest.append(df["ts"].min().to_pydatetime())
        if oldest:
            return min(oldest)
    return None
