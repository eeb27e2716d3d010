"""``price_indicators``: per-coin indicators of the raw prices, in PostgreSQL (hourly partitions).

A partition ``[start, end)`` is refreshed incrementally (see :mod:`marketflow_assets.indicators`):
only the raw rows in ``[start - 300 s, end)`` are read (pruned by ``date=`` directory and file
name), the per-coin state before ``start`` comes from ``price_indicators`` itself (two indexed
lookups per coin), the pure function runs in process for small windows (the newest hour) or on
buckets of coins with Spark's ``applyInPandas`` for large ones (backfills), and the rows replace
the period in one transaction. Cost depends on the partition, not on the history.
"""

import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from marketflow_assets import indicators as ind
from marketflow_assets.assets.partitions import HOURLY, backfill_policy, self_dependency
from marketflow_assets.assets.policies import (
    TRANSIENT_IO_RETRY,
    retry_transient_io_only,
    row_count_metadata,
    table_metadata,
)
from marketflow_assets.assets.raw_prices import RAW_PRICES_KEY
from marketflow_assets.assets.spark_compute import (
    indicators_dataframe,
    raw_window_files,
    read_raw_window,
    read_raw_window_local,
    session,
    spark_to_pandas,
)
from marketflow_assets.raw_dataset import raw_row_count
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.resources.spark import LOCAL_MAX_ROWS, SparkResource
from marketflow_assets.schema import PRICE_INDICATORS_ASSET

logger = logging.getLogger(__name__)

WATCHED_COINS = ("bitcoin", "ethereum")


@dataclass
class IndicatorRefresh:
    """Outcome of refreshing ``price_indicators`` for ``[start, end)``."""

    start: datetime
    end: datetime
    rows: pd.DataFrame
    coins_with_state: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    engine: str = "none"  # where the rows were computed: "local", "spark" or "none" (no input)


def refresh_indicators(
    spark,
    raw_dir: Path,
    postgres: PostgresResource,
    start: datetime,
    end: datetime,
    local_max_rows: int = LOCAL_MAX_ROWS,
) -> IndicatorRefresh:
    """Compute ``price_indicators`` for ``[start, end)`` and replace them in Postgres.

    ``spark``: a SparkSession or a function returning one, called only when the raw window has
    more than ``local_max_rows`` rows; smaller windows are computed in this process.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    postgres.ensure_tables()
    files = raw_window_files(raw_dir, start, end)
    state, engine = None, "none"
    if not files:
        rows = ind.compute_indicators(pd.DataFrame(columns=list(ind.RAW_INPUT_COLUMNS)))
    else:
        state = postgres.fetch_indicator_state(None, start, ind.lookback_start(start))
        timings["read_state"] = time.perf_counter() - t0
        if raw_row_count(files, stop_above=local_max_rows) <= local_max_rows:
            engine = "local"
            raw = read_raw_window_local(files, start, end)
            rows = ind.compute_indicators(raw, state, start=start, end=end)
        else:
            engine = "spark"
            raw_df = read_raw_window(session(spark), raw_dir, start, end, files)
            rows = spark_to_pandas(indicators_dataframe(raw_df, state, start, end))
        timings["compute"] = time.perf_counter() - t0 - sum(timings.values())
    postgres.replace_period("price_indicators", rows, start, end)
    timings["write"] = time.perf_counter() - t0 - sum(timings.values())
    coins_with_state = 0 if state is None else len(state)
    logger.info(
        "price_indicators %s .. %s: %d rows, %d coins (%d continued from stored state), %s, %.2fs",
        start.isoformat(),
        end.isoformat(),
        len(rows),
        rows["coin_id"].nunique(),
        coins_with_state,
        engine,
        time.perf_counter() - t0,
    )
    return IndicatorRefresh(start, end, rows, coins_with_state, timings, engine)


def indicator_metadata(result: IndicatorRefresh) -> dict[str, Any]:
    """Metadata shown in the UI (numeric values are plotted over time)."""
    rows = result.rows
    meta: dict[str, Any] = {
        "rows": dg.MetadataValue.int(len(rows)),
        "coins": dg.MetadataValue.int(int(rows["coin_id"].nunique())),
        "coins_continued_from_state": dg.MetadataValue.int(result.coins_with_state),
        "period_start": dg.MetadataValue.timestamp(result.start),
        "period_end": dg.MetadataValue.timestamp(result.end),
        "refresh_seconds": dg.MetadataValue.float(round(sum(result.seconds.values()), 3)),
        "engine": dg.MetadataValue.text(result.engine),
    }
    if len(rows):
        meta["first_ts"] = dg.MetadataValue.timestamp(rows["ts"].min().to_pydatetime())
        meta["last_ts"] = dg.MetadataValue.timestamp(rows["ts"].max().to_pydatetime())
        meta["null_change_5min"] = dg.MetadataValue.int(int(rows["change_5min"].isna().sum()))
    for coin in WATCHED_COINS:
        coin_rows = rows[rows["coin_id"] == coin]
        if len(coin_rows):
            latest = coin_rows.loc[coin_rows["ts"].idxmax()]
            meta[f"latest_{coin}_price"] = dg.MetadataValue.float(float(latest["price"]))
            if pd.notna(latest["change_5min"]):
                meta[f"latest_{coin}_change_5min"] = dg.MetadataValue.float(
                    float(latest["change_5min"])
                )
    return meta


def build_price_indicators(
    partitions_def: dg.TimeWindowPartitionsDefinition = HOURLY,
) -> dg.AssetsDefinition:
    with warnings.catch_warnings():  # BackfillPolicy is beta in this Dagster version
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _build_price_indicators(partitions_def)


def _build_price_indicators(
    partitions_def: dg.TimeWindowPartitionsDefinition,
) -> dg.AssetsDefinition:
    @dg.asset(
        name=PRICE_INDICATORS_ASSET,
        deps=[
            RAW_PRICES_KEY,
            dg.AssetDep(PRICE_INDICATORS_ASSET, partition_mapping=self_dependency()),
        ],
        partitions_def=partitions_def,
        backfill_policy=backfill_policy(),
        group_name="market_data",
        kinds={"spark", "postgres"},
        owners=["team:marketflow"],
        tags={"domain": "crypto"},
        code_version=ind.INDICATOR_FORMULA_VERSION,
        retry_policy=TRANSIENT_IO_RETRY,
        metadata={
            **table_metadata("price_indicators"),
            "primary_key": "(coin_id, ts)",
            "formulas": "docs/INDICATORS.md (code: marketflow_assets/indicators.py)",
        },
    )
    def price_indicators(
        context: dg.AssetExecutionContext,
        postgres: PostgresResource,
        raw_data: RawDataResource,
        pyspark: SparkResource,
    ) -> dg.MaterializeResult:
        """Per-coin price indicators in PostgreSQL table `price_indicators`.

        For every raw observation: `change_1min` / `change_5min` (% change vs the latest price at
        least 60 s / 300 s older), `sma_5min` and `volatility_5min` (mean and sample std over the
        trailing 5 minutes), `ema_3min` (time-decay EMA, tau = 180 s, over the coin's whole
        history). Hourly UTC partitions; each continues from the previous partition's stored
        state, so only the new hour (+ 5 min lookback) is read. Writes are idempotent.
        """
        window = context.partition_time_window
        context.log.info(f"refreshing price_indicators for [{window.start}, {window.end})")
        with retry_transient_io_only():
            result = refresh_indicators(
                pyspark.get_session,
                raw_data.raw_dir,
                postgres,
                window.start,
                window.end,
                local_max_rows=pyspark.max_local_rows,
            )
            table_rows = postgres.row_count("price_indicators")
        return dg.MaterializeResult(
            metadata={
                **indicator_metadata(result),
                **row_count_metadata(len(result.rows), table_rows),
            }
        )

    return price_indicators


price_indicators = build_price_indicators()
