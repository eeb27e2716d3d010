"""Compute glue for the indicator assets: read the raw window, apply the pure functions.

All math lives in :mod:`marketflow_assets.indicators`; this module only decides which files to
read, where the work runs and how it is split. Small inputs (up to the ``pyspark`` resource's
``local_max_rows``, e.g. the newest hour) are read with pyarrow and computed in this process;
larger ones (backfills) on Spark: ``applyInPandas(compute_indicators)`` over buckets of coins
(each coin's rows together, with its prior state) for the indicators and
``applyInPandas(compute_movers)`` over buckets of snapshots for the movers. Both paths give
identical rows (tested).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from marketflow_assets import indicators as ind
from marketflow_assets.assets.raw_prices import RawFile, list_raw_files
from marketflow_assets.schema import (
    INDICATOR_COLUMNS,
    MOVER_COLUMNS,
    RAW_COLUMNS,
    raw_arrow_schema,
    spark_ddl,
)

RAW_READ_DDL = spark_ddl(tuple(c for c in RAW_COLUMNS if c[0] in ind.RAW_INPUT_COLUMNS))
_SQL_TO_SPARK = {"text": "string", "double": "double", "timestamptz": "timestamp", "int": "int"}


def _ddl(columns: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"`{name}` {_SQL_TO_SPARK[kind.split()[0]]}" for name, kind in columns)


INDICATOR_DDL = _ddl(INDICATOR_COLUMNS)
MOVER_DDL = _ddl(MOVER_COLUMNS)


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


def raw_window_files(raw_dir: Path, start: datetime, end: datetime) -> list[RawFile]:
    """Raw files that may hold rows with ``ts`` in ``[start - 300 s, end)`` (the window plus the
    indicators' lookback): only the ``date=`` directories and streaming files overlapping it."""
    return list_raw_files(raw_dir, ind.lookback_start(pd.Timestamp(start)).to_pydatetime(), end)


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


def session(spark):
    """``spark`` if it is a SparkSession, else ``spark()`` (a lazy provider: no session is
    started for computations that stay in process)."""
    return spark() if callable(spark) else spark


def read_raw_window_local(files: list[RawFile], start: datetime, end: datetime) -> pd.DataFrame:
    """The rows :func:`read_raw_window` selects, read in this process with pyarrow.

    ``ts`` becomes tz-aware UTC in microseconds (nanosecond files truncated, as on Spark).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = raw_arrow_schema()
    target = pa.schema([schema.field(name) for name in ind.RAW_INPUT_COLUMNS])
    lookback = pa.scalar(ind.lookback_start(pd.Timestamp(start)), type=target.field("ts").type)
    stop = pa.scalar(pd.Timestamp(end), type=target.field("ts").type)
    tables = []
    for raw_file in files:
        table = pq.read_table(raw_file.path, columns=list(ind.RAW_INPUT_COLUMNS))
        table = table.select(list(ind.RAW_INPUT_COLUMNS)).cast(target, safe=False)
        keep = pc.and_(
            pc.and_(pc.greater_equal(table["ts"], lookback), pc.less(table["ts"], stop)),
            pc.is_valid(table["current_price"]),
        )
        tables.append(table.filter(keep))
    return pa.concat_tables(tables).to_pandas()


def read_raw_window(
    spark, raw_dir: Path, start: datetime, end: datetime, files: list[RawFile] | None = None
):
    """Spark DataFrame of raw rows with ``ts`` in ``[start - 300 s, end)``, or None if no file.

    Reads ``files`` (default :func:`raw_window_files`). Files written by other tools with
    nanosecond timestamps are read as integers (``spark.sql.legacy.parquet.nanosAsLong``) and
    converted to microseconds.
    """
    import pyspark.sql.functions as F

    lookback = ind.lookback_start(pd.Timestamp(start)).to_pydatetime()
    files = raw_window_files(raw_dir, start, end) if files is None else files
    if not files:
        return None
    nanos = [f for f in files if f.min_ts is None and _has_nanosecond_ts(f.path)]
    micros = [f for f in files if f not in nanos]
    frames = []
    if micros:
        frames.append(spark.read.schema(RAW_READ_DDL).parquet(*(str(f.path) for f in micros)))
    if nanos:
        spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
        ddl = RAW_READ_DDL.replace("`ts` TIMESTAMP", "`ts` BIGINT")
        frame = spark.read.schema(ddl).parquet(*(str(f.path) for f in nanos))
        frames.append(frame.withColumn("ts", F.timestamp_micros(F.floor(F.col("ts") / 1000))))
    frame = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    return frame.where(
        (F.col("ts") >= F.lit(lookback))
        & (F.col("ts") < F.lit(pd.Timestamp(end).to_pydatetime()))
        & F.col("current_price").isNotNull()
    ).select(*ind.RAW_INPUT_COLUMNS)


def _plain_state(state: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """State rows as plain Python values (cheap to ship to the Python workers)."""
    if state is None or state.empty:
        return {}
    out = {}
    for row in state.to_dict("records"):
        out[row["coin_id"]] = {
            "ref_ts": None if pd.isna(row["ref_ts"]) else int(ind.to_ns(row["ref_ts"])),
            "ref_price": None if pd.isna(row["ref_price"]) else float(row["ref_price"]),
            "ema_ts": None if pd.isna(row["ema_ts"]) else int(ind.to_ns(row["ema_ts"])),
            "ema_3min": None if pd.isna(row["ema_3min"]) else float(row["ema_3min"]),
        }
    return out


def _buckets(spark) -> int:
    return max(1, int(spark.conf.get("spark.sql.shuffle.partitions", "4")))


def indicators_dataframe(raw_df, state: pd.DataFrame | None, start: datetime, end: datetime):
    """Spark DataFrame of ``price_indicators`` rows for ``[start, end)`` (lazy).

    Coins are hashed into a few buckets (``spark.sql.shuffle.partitions``); each bucket's rows go
    to :func:`~marketflow_assets.indicators.compute_indicators` at once, which splits them per
    coin with numpy - far cheaper than one pandas call per coin.
    """
    import pyspark.sql.functions as F

    states = _plain_state(state)
    start_ns, end_ns = int(ind.to_ns(start)), int(ind.to_ns(end))
    buckets = _buckets(raw_df.sparkSession)

    def per_bucket(pdf: pd.DataFrame) -> pd.DataFrame:
        ids = set(pdf["id"].unique())
        bucket_state = {coin: states[coin] for coin in ids if coin in states}
        return ind.compute_indicators(
            pdf.drop(columns="_bucket"), bucket_state, start=start_ns, end=end_ns
        )

    bucketed = raw_df.withColumn("_bucket", F.pmod(F.hash("id"), F.lit(buckets)))
    return bucketed.groupBy("_bucket").applyInPandas(per_bucket, schema=INDICATOR_DDL)


def movers_dataframe(spark, indicators: pd.DataFrame):
    """Spark DataFrame of ``market_movers`` rows for the given indicator rows (lazy)."""
    import pyspark.sql.functions as F

    cols = ["coin_id", "symbol", "ts", "price", "change_5min"]
    eligible = indicators.loc[indicators["change_5min"].notna(), cols]
    frame = spark.createDataFrame(
        eligible,
        schema="coin_id string, symbol string, ts timestamp, price double, change_5min double",
    )

    def per_bucket(pdf: pd.DataFrame) -> pd.DataFrame:  # whole snapshots, several per bucket
        return ind.compute_movers(pdf.drop(columns="_bucket"))

    bucketed = frame.withColumn("_bucket", F.pmod(F.hash("ts"), F.lit(_buckets(spark))))
    return bucketed.groupBy("_bucket").applyInPandas(per_bucket, schema=MOVER_DDL)


def spark_to_pandas(frame) -> pd.DataFrame:
    """Collect a Spark DataFrame through Arrow; timestamps become tz-aware UTC."""
    out = frame.toPandas()
    for name in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[name]) and out[name].dt.tz is None:
            out[name] = out[name].dt.tz_localize("UTC")
    return out
