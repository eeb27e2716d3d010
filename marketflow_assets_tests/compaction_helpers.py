"""Raw datasets for the compaction tests: streaming-job-like files, visible rows, file counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from marketflow_assets import compaction
from marketflow_assets.raw_dataset import list_raw_files
from marketflow_assets.schema import raw_arrow_schema

T0 = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)
COINS = ("bitcoin", "ethereum", "solana")


def micros(ts: datetime) -> int:
    return compaction.micros(ts)


def write_batch(raw_dir: Path, polls: list[datetime], batch: int, sink: str = "abc123") -> None:
    """One streaming-job-like file per date for ``polls`` (rows for every coin)."""
    schema = raw_arrow_schema()
    by_day: dict = {}
    for ts in polls:
        by_day.setdefault(ts.date(), []).append(ts)
    for day, stamps in by_day.items():
        rows = {f.name: [] for f in schema}
        for ts in stamps:
            for k, coin in enumerate(COINS):
                rows["id"].append(coin)
                rows["symbol"].append(coin[:3])
                rows["name"].append(coin.title())
                rows["current_price"].append(100.0 * (k + 1) + ts.minute + ts.second / 60)
                rows["last_updated"].append(ts)
                rows["ts"].append(ts)
                for col in ("market_cap", "total_volume", "high_24h", "low_24h"):
                    if col in rows:
                        rows[col].append(float(k))
        for f in schema:
            if not rows[f.name]:
                rows[f.name] = [None] * len(rows["id"])
        folder = raw_dir / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{sink}-b{batch:010d}-000-{micros(min(stamps))}-{micros(max(stamps))}.parquet"
        pq.write_table(pa.table(rows, schema=schema), folder / name)


def all_rows(raw_dir: Path) -> list[tuple]:
    """Every visible row as a sorted list of tuples (through the readers' listing)."""
    files = list_raw_files(raw_dir)
    if not files:
        return []
    table = pa.concat_tables([pq.read_table(f.path) for f in files])
    return sorted(tuple(r.values()) for r in table.to_pylist())


def files_per_hour(raw_dir: Path) -> dict[datetime, list[str]]:
    out: dict = {}
    for f in list_raw_files(raw_dir):
        hour = f.min_ts.replace(minute=0, second=0, microsecond=0)
        assert f.max_ts < hour + timedelta(hours=1) or not f.path.name.startswith("cpart")
        out.setdefault(hour, []).append(f.path.name)
    return out


def make_history(raw_dir: Path) -> None:
    """Polls every 30 s from 21:00 to 01:20 (crossing midnight), batches of 1-8 polls, some
    batches spanning an hour boundary and one spanning the date boundary."""
    polls = [T0 + timedelta(seconds=30 * i) for i in range(int(4.34 * 120))]
    batch, i = 0, 0
    while i < len(polls):
        size = 1 + batch % 8
        write_batch(raw_dir, polls[i : i + size], batch)
        i += size
        batch += 1
