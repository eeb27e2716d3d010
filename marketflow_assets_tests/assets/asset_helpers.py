"""Helpers for the asset tests: write real raw Parquet, read real Postgres tables."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from marketflow_assets.schema import raw_arrow_schema


def write_raw_parquet(raw_dir: Path, rows, name: str = "part-00000.parquet") -> list[Path]:
    """Write rows ``(id, symbol, ts, price)`` as the raw dataset (hive ``date=`` directories)."""
    frame = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    paths = []
    for day, group in frame.groupby(frame["ts"].dt.date):
        columns = {}
        for field in raw_arrow_schema():
            if field.name in group:
                columns[field.name] = pa.array(group[field.name], type=field.type)
            elif field.name == "name":
                columns[field.name] = pa.array(group["id"].str.title(), type=field.type)
            elif field.name == "last_updated":
                columns[field.name] = pa.array(group["ts"], type=field.type)
            else:
                columns[field.name] = pa.nulls(len(group), field.type)
        folder = Path(raw_dir) / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns, schema=raw_arrow_schema()), folder / name)
        paths.append(folder / name)
    return paths


def read_table(url: str, table: str) -> pd.DataFrame:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(f"SELECT * FROM {table}")
            cols = [d[0] for d in cur.description]
            frame = pd.DataFrame(cur.fetchall(), columns=cols)
    finally:
        conn.close()
    for col in frame.columns:
        if col in ("ts", "snapshot_ts"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


def partition_keys(assets_def: dg.AssetsDefinition, first_ts, last_ts) -> list[str]:
    fmt = "%Y-%m-%d-%H:00"
    return assets_def.partitions_def.get_partition_keys_in_range(
        dg.PartitionKeyRange(first_ts.strftime(fmt), last_ts.strftime(fmt))
    )
