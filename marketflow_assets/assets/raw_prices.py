"""``raw_prices``: the raw Parquet dataset written by the Spark streaming job (external asset).

Dagster does not materialize it; the observation sensor (``sensors/raw_prices.py``) reports what
the streaming job added. The helpers here list the dataset's files cheaply: hive directories
``date=YYYY-MM-DD`` prune by day, and the streaming job's file names
(``part-<uuid>-b<batch>-<k>-<min ts µs>-<max ts µs>.parquet``) prune by time inside a day, so a
refresh of one hour opens only that hour's files however long the history is. Files named
otherwise (written by other tools) are always included and filtered by ``ts`` when read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

from marketflow_assets.schema import RAW_PARTITION_COLUMN

RAW_PRICES_KEY = dg.AssetKey("raw_prices")

# File naming of spark_streaming/kafka_streaming.py (min/max ``ts`` of the file, in µs).
_STREAMING_FILE = re.compile(r"^part-[0-9a-f]+-b\d+-\d+-(\d+)-(\d+)\.parquet$")

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

    Hidden files (``.``/``_`` prefixes: in-progress writes) are skipped.
    """
    files = []
    for day, folder in _day_dirs(Path(raw_dir)):
        if start is not None and day < start.astimezone(UTC).date():
            continue
        if end is not None and day > (end.astimezone(UTC) - timedelta(microseconds=1)).date():
            continue
        for entry in folder.iterdir():
            name = entry.name
            if name.startswith((".", "_")) or not name.endswith(".parquet"):
                continue
            match = _STREAMING_FILE.match(name)
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
    return sorted(files, key=lambda f: str(f.path))
