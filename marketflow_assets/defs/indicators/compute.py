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
from marketflow_assets.raw_dataset import (
    RawFile,
    list_raw_files,
    read_rows_local,
    read_rows_spark,
)
from marketflow_assets.schema import INDICATOR_COLUMNS, MOVER_COLUMNS, MOVER_INPUT_COLUMNS

_SQL_TO_SPARK = {"text": "string", "double": "double", "timestamptz": "timestamp", "int": "int"}


def _ddl(columns: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"`{name}` {_SQL_TO_SPARK[kind.split()[0]]}" for name, kind in columns)


INDICATOR_DDL = _ddl(INDICATOR_COLUMNS)
MOVER_DDL = _ddl(MOVER_COLUMNS)


def lookback(start: datetime) -> datetime:
    return ind.lookback_start(pd.Timestamp(start)).to_pydatetime()


def raw_window_files(raw_dir: Path, start: datetime, end: datetime) -> list[RawFile]:
    """Raw files that may hold rows with ``ts`` in ``[start - 300 s, end)`` (the window plus the
    indicators' lookback): only the ``date=`` directories and streaming files overlapping it."""
    return list_raw_files(raw_dir, lookback(start), end)


def session(spark):
    """``spark`` if it is a SparkSession, else ``spark()`` (a lazy provider: no session is
    started for computations that stay in process)."""
    return spark() if callable(spark) else spark


def read_raw_window_local(files: list[RawFile], start: datetime, end: datetime) -> pd.DataFrame:
    """The rows :func:`read_raw_window` selects, read in this process with pyarrow."""
    return read_rows_local(files, lookback(start), end, ind.RAW_INPUT_COLUMNS)


def read_raw_window(
    spark, raw_dir: Path, start: datetime, end: datetime, files: list[RawFile] | None = None
):
    """Spark DataFrame of raw rows with ``ts`` in ``[start - 300 s, end)``, or None if no file.

    Reads ``files`` (default :func:`raw_window_files`).
    """
    files = raw_window_files(raw_dir, start, end) if files is None else files
    return read_rows_spark(spark, files, lookback(start), end, ind.RAW_INPUT_COLUMNS)


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

    eligible = indicators.loc[indicators["change_5min"].notna(), list(MOVER_INPUT_COLUMNS)]
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
