"""``raw_prices``: the raw Parquet dataset written by the Spark streaming job (external asset).

Dagster does not materialize it; the observation sensor (``sensors/raw_prices.py``) reports what
the streaming job added. The helpers here list the dataset's files cheaply: hive directories
``date=YYYY-MM-DD`` prune by day, and the streaming job's file names
(``part-<uuid>-b<batch>-<k>-<min ts µs>-<max ts µs>.parquet``) prune by time inside a day, so a
refresh of one hour opens only that hour's files however long the history is. Files named
otherwise (written by other tools) are always included and filtered by ``ts`` when read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

from marketflow_assets.compaction import name_ts_range, visible_names
from marketflow_assets.schema import RAW_PARTITION_COLUMN

RAW_PRICES_KEY = dg.AssetKey("raw_prices")

raw_prices = dg.AssetSpec(
    key=RAW_PRICES_KEY,
    description=(
        "Raw CoinGecko market snapshots as Parquet under `$MARKETFLOW_DATA_DIR/raw_prices/` "
        "(hive partitions `date=YYYY-MM-DD`, at most one row per (`id`, `ts`)), written exactly "
        "once by the Spark Structured Streaming job from Kafka topic `crypto_prices`. Observed "
        "by the `raw_prices_observation_sensor`."
    ),
    group_name="market_data",
    kinds={"parquet", "spark"},
    metadata={"dataset": "raw_prices/ (hive: date=YYYY-MM-DD)", "writer": "spark_streaming"},
)


@dataclass(frozen=True)
class RawFile:
    path: Path
    day: date
    min_ts: datetime | None  # from the streaming job's file name, when it follows it
    max_ts: datetime | None
    mtime_ns: int
    size: int


def _micros(value: str) -> datetime:
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
    """Visible Parquet files that may hold rows with ``ts`` in ``[start, end)`` (all if None).

    Hidden files (``.``/``_`` prefixes: in-progress writes) are skipped, and so are files that
    a committed compaction replaced, or compacted files not committed yet
    (:func:`marketflow_assets.compaction.visible_names`).
    """
    files = []
    for day, folder in _day_dirs(Path(raw_dir)):
        if start is not None and day < start.astimezone(UTC).date():
            continue
        if end is not None and day > (end.astimezone(UTC) - timedelta(microseconds=1)).date():
            continue
        for name in visible_names(folder):  # compaction-aware (see compaction.py)
            entry = folder / name
            rng = name_ts_range(name)
            lo = hi = None
            if rng is not None:
                lo, hi = _micros(str(rng[0])), _micros(str(rng[1]))
                if (end is not None and lo >= end) or (start is not None and hi < start):
                    continue
            try:
                stat = entry.stat()
            except FileNotFoundError:  # removed meanwhile
                continue
            files.append(RawFile(entry, day, lo, hi, stat.st_mtime_ns, stat.st_size))
    return sorted(files, key=lambda f: str(f.path))


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
