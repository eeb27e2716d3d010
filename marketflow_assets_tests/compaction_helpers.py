"""Raw tables for the compaction tests: streaming-job-like commits, visible rows, file counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from marketflow_assets.raw_dataset import append_batch, micros, snapshot
from marketflow_assets.schema import raw_arrow_schema, raw_table_schema

T0 = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)
COINS = ("bitcoin", "ethereum", "solana")
APP = "test-stream"

__all__ = ["micros"]


def batch_table(polls: list[datetime]) -> pa.Table:
    """Rows for every coin at each of ``polls`` in the table schema."""
    rows = {f.name: [] for f in raw_table_schema()}
    for ts in polls:
        for k, coin in enumerate(COINS):
            rows["id"].append(coin)
            rows["symbol"].append(coin[:3])
            rows["name"].append(coin.title())
            rows["current_price"].append(100.0 * (k + 1) + ts.minute + ts.second / 60)
            rows["last_updated"].append(ts)
            rows["ts"].append(ts)
            rows["date"].append(ts.date())
            for col in ("market_cap", "total_volume", "high_24h", "low_24h"):
                rows[col].append(float(k))
    for f in raw_table_schema():
        if not rows[f.name]:
            rows[f.name] = [None] * len(rows["id"])
    return pa.table(rows, schema=raw_table_schema())


def write_batch(raw_dir: Path, polls: list[datetime], batch: int, app: str = APP):
    """One streaming-job-like commit holding ``polls`` (rows for every coin)."""
    return append_batch(raw_dir, batch_table(polls), app, batch)


def all_rows(raw_dir) -> list[tuple]:
    """Every row of one pinned version (or of the snapshot given) as a sorted list of tuples."""
    snap = snapshot(raw_dir)
    if not snap.files_all:
        return []
    table = pa.concat_tables(
        [pq.read_table(f.path).select(raw_arrow_schema().names) for f in snap.files_all]
    )
    return sorted(tuple(r.values()) for r in table.to_pylist())


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
