"""``market_movers``: top-5 gainers and losers by 5-minute change per snapshot, in PostgreSQL."""

import logging
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dagster as dg
import pandas as pd

from marketflow_assets import indicators as ind
from marketflow_assets.defs.common.launch import UI, tag_launcher
from marketflow_assets.defs.common.partitions import HOURLY, backfill_policy
from marketflow_assets.defs.common.policies import (
    TRANSIENT_IO_RETRY,
    live_row_count_metadata,
    retry_transient_io_only,
    table_metadata,
)
from marketflow_assets.defs.indicators import incremental
from marketflow_assets.defs.indicators.compute import movers_dataframe, session, spark_to_pandas
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.spark import LOCAL_MAX_ROWS, SparkResource
from marketflow_assets.schema import (
    MARKET_MOVERS_ASSET,
    MOVER_INPUT_COLUMNS,
    PRICE_INDICATORS_ASSET,
)

logger = logging.getLogger(__name__)


@dataclass
class MoversRefresh:
    start: datetime
    end: datetime
    rows: pd.DataFrame
    seconds: float
    engine: str  # "local", "spark" or "none" (nothing to recompute)
    recomputed_from: datetime | None = None
    plan: str = ""


def refresh_movers(
    spark,
    postgres: PostgresResource,
    start: datetime,
    end: datetime,
    local_max_rows: int = LOCAL_MAX_ROWS,
    after_write=None,
) -> MoversRefresh:
    """Compute ``market_movers`` for snapshots in ``[start, end)`` from the stored indicators.

    :func:`~marketflow_assets.indicators.compute_movers` runs in this process, where the rows
    already are after the Postgres read, for up to ``local_max_rows`` rows (shipping one hour to
    Spark's Python workers and back costs ~10x the ranking itself), else on Spark per bucket of
    snapshots (``spark``: a SparkSession or a function returning one).
    """
    t0 = time.perf_counter()
    postgres.ensure_tables()
    source = postgres.read_period(
        "price_indicators",
        start,
        end,
        columns=list(MOVER_INPUT_COLUMNS),
        where="change_5min IS NOT NULL",
    )
    engine = "local" if len(source) <= local_max_rows else "spark"
    if engine == "local":
        movers = ind.compute_movers(source)
    else:
        movers = spark_to_pandas(movers_dataframe(session(spark), source))
    postgres.replace_period(
        "market_movers", movers, start, end, ts_column="snapshot_ts", after_write=after_write
    )
    seconds = time.perf_counter() - t0
    logger.info(
        "market_movers %s .. %s: %d rows for %d snapshots, %s, %.2fs",
        start.isoformat(),
        end.isoformat(),
        len(movers),
        movers["snapshot_ts"].nunique(),
        engine,
        seconds,
    )
    return MoversRefresh(start, end, movers, seconds, engine)


def refresh_movers_incremental(
    spark,
    postgres: PostgresResource,
    start: datetime,
    end: datetime,
    local_max_rows: int = LOCAL_MAX_ROWS,
    forced: str | None = None,
) -> MoversRefresh:
    """``market_movers`` of the hourly partitions in ``[start, end)``, recomputed only for the
    snapshots whose indicators changed since the last refresh, or all with ``forced``
    (:func:`marketflow_assets.defs.indicators.incremental.refresh_movers_window`)."""
    t0 = time.perf_counter()

    def compute(frm: datetime, stop: datetime, after_write) -> MoversRefresh:
        return refresh_movers(spark, postgres, frm, stop, local_max_rows, after_write=after_write)

    step, result = incremental.refresh_movers_window(postgres, start, end, compute, forced)
    if result is None:
        empty = ind.compute_movers(
            pd.DataFrame(columns=["ts", "coin_id", "symbol", "change_5min", "price"])
        )
        result = MoversRefresh(start, end, empty, 0.0, "none")
    result.start, result.end = start, end
    result.seconds = time.perf_counter() - t0
    result.recomputed_from = None if step.start >= end else step.start
    result.plan = step.reason
    return result


def movers_markdown(movers: pd.DataFrame) -> str:
    """Markdown table of the latest snapshot's gainers and losers."""
    if movers.empty:
        return "_no snapshot with a 5-minute change in this period_"
    latest = movers["snapshot_ts"].max()
    snap = movers[movers["snapshot_ts"] == latest].sort_values(["direction", "rank"])
    lines = [
        f"Snapshot {pd.Timestamp(latest).isoformat()}",
        "",
        "| direction | rank | coin | symbol | change_5min % | price |",
        "|---|---:|---|---|---:|---:|",
    ]
    for row in snap.itertuples(index=False):
        lines.append(
            f"| {row.direction} | {row.rank} | {row.coin_id} | {row.symbol} | "
            f"{row.change_5min:+.4f} | {row.price:.8g} |"
        )
    return "\n".join(lines)


def movers_metadata(result: MoversRefresh) -> dict[str, Any]:
    movers = result.rows
    meta: dict[str, Any] = {
        "rows": dg.MetadataValue.int(len(movers)),
        "snapshots": dg.MetadataValue.int(int(movers["snapshot_ts"].nunique())),
        "period_start": dg.MetadataValue.timestamp(result.start),
        "period_end": dg.MetadataValue.timestamp(result.end),
        "refresh_seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "engine": dg.MetadataValue.text(result.engine),
        "latest_top_movers": dg.MetadataValue.md(movers_markdown(movers)),
    }
    if result.plan:
        meta["incremental_plan"] = dg.MetadataValue.text(result.plan)
    if result.recomputed_from is not None:
        meta["recomputed_from"] = dg.MetadataValue.timestamp(result.recomputed_from)
    if len(movers):
        latest = movers[movers["snapshot_ts"] == movers["snapshot_ts"].max()]
        meta["latest_snapshot"] = dg.MetadataValue.timestamp(
            pd.Timestamp(latest["snapshot_ts"].iloc[0]).to_pydatetime()
        )
        for direction in ("gainer", "loser"):
            top = latest[(latest["direction"] == direction) & (latest["rank"] == 1)]
            if len(top):
                meta[f"top_{direction}_change_5min"] = dg.MetadataValue.float(
                    float(top["change_5min"].iloc[0])
                )
    return meta


def build_market_movers(
    partitions_def: dg.TimeWindowPartitionsDefinition = HOURLY,
) -> dg.AssetsDefinition:
    with warnings.catch_warnings():  # BackfillPolicy is beta in this Dagster version
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _build_market_movers(partitions_def)


def _build_market_movers(partitions_def: dg.TimeWindowPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=MARKET_MOVERS_ASSET,
        deps=[PRICE_INDICATORS_ASSET],
        partitions_def=partitions_def,
        backfill_policy=backfill_policy(),
        group_name="market_data",
        kinds={"spark", "postgres"},
        owners=["team:marketflow"],
        tags={"domain": "crypto"},
        code_version=ind.MOVER_FORMULA_VERSION,
        retry_policy=TRANSIENT_IO_RETRY,
        metadata={
            **table_metadata("market_movers"),
            "primary_key": "(snapshot_ts, direction, rank)",
            "formulas": "docs/INDICATORS.md (code: marketflow_assets/indicators.py)",
        },
    )
    def market_movers(
        context: dg.AssetExecutionContext,
        postgres: PostgresResource,
        pyspark: SparkResource,
    ) -> dg.MaterializeResult:
        """Top-5 gainers and losers by `change_5min` for every snapshot `ts`.

        Among coins with a non-NULL `change_5min` at a snapshot: the 5 highest (`gainer`, rank 1
        = highest) and the 5 lowest (`loser`, rank 1 = lowest), ties by `coin_id`. Read from the
        same partition of `price_indicators`, only for the snapshots whose indicators changed
        since the last refresh; written idempotently to table `market_movers`.
        """
        window = context.partition_time_window
        by_hand = tag_launcher(context) == UI  # the UI's "Materialize" recomputes
        with retry_transient_io_only():
            result = refresh_movers_incremental(
                pyspark.get_session,
                postgres,
                window.start,
                window.end,
                local_max_rows=pyspark.max_local_rows,
                forced="launched by hand" if by_hand else None,
            )
            table_rows = postgres.estimated_row_count("market_movers")
        return dg.MaterializeResult(
            metadata={**movers_metadata(result), **live_row_count_metadata(result, table_rows)}
        )

    return market_movers


market_movers = build_market_movers()
