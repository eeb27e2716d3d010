"""The one place where the benchmarks call the project's code (assets, Spark, refresh).

Keeping the adapters here means a change of the assets' internals touches one file.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

#: First hourly partition of the assets the benchmarks materialize (before every history).
BENCH_PARTITION_START = datetime(2020, 1, 1, tzinfo=UTC)


def get_bench_spark():
    """The project's SparkSession (``marketflow_assets.spark_session.get_spark``: project conf,
    local).

    The Dagster ``PySparkResource`` of the assets is built from the same ``spark_conf()``, so a
    materialization in this process reuses this session (``getOrCreate``).
    """
    from marketflow_assets.spark_session import get_spark

    return get_spark(app_name="marketflow-bench")


def spark_indicators(spark, raw_dir: Path, start: datetime, end: datetime):
    """The assets' Spark indicator computation for ``[start, end)`` from scratch (no state):
    ``spark_compute.read_raw_window`` + ``spark_compute.indicators_dataframe`` (lazy)."""
    from marketflow_assets.defs.indicators.compute import indicators_dataframe, read_raw_window

    raw_df = read_raw_window(spark, raw_dir, start, end)
    return indicators_dataframe(raw_df, None, start, end)


def forget_refreshes(postgres_url: str, start: datetime, end: datetime) -> None:
    """Drop the incremental-refresh ledger of the hours in ``[start, end)``: their next refresh
    recomputes the whole hour (what the history benchmarks time), not just new raw files."""
    import psycopg2

    from marketflow_assets.resources import refresh_ledger
    from marketflow_assets.resources.postgres import PostgresResource

    PostgresResource(url=postgres_url).ensure_tables()
    conn = psycopg2.connect(postgres_url)
    try:
        with conn, conn.cursor() as cur:
            refresh_ledger.forget(cur, start, end)
    finally:
        conn.close()


def materialize_partition(
    data_dir: Path, postgres_url: str, partition_key: str, whole_hour: bool = True
) -> float:
    """Materialize ``price_indicators`` + ``market_movers`` for one partition through Dagster
    (``dg.materialize``, in-process executor, ephemeral instance: what a sensor-triggered run
    executes, minus the run launcher's process start). Returns wall seconds.

    ``whole_hour``: forget the partition's incremental ledger first (untimed), so the run
    recomputes the whole hour rather than only raw files it has not seen.
    """
    import dagster as dg

    from marketflow_assets.definitions import build_resources
    from marketflow_assets.defs.common.launch import AUTOMATION, LAUNCHED_BY_TAG
    from marketflow_assets.defs.common.partitions import hourly_partitions
    from marketflow_assets.defs.indicators.assets import build_price_indicators
    from marketflow_assets.defs.indicators.movers import build_market_movers

    # the synthetic histories lie in the past: partitions from 2020 on, whatever ./data holds
    partitions = hourly_partitions(start=BENCH_PARTITION_START)
    price_indicators = build_price_indicators(partitions)
    market_movers = build_market_movers(partitions)

    resources = build_resources(postgres_url=postgres_url, data_dir=str(data_dir))
    if whole_hour:
        start = datetime.strptime(partition_key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
        forget_refreshes(postgres_url, start, start + timedelta(hours=1))
    started = time.perf_counter()
    result = dg.materialize(
        [price_indicators, market_movers],
        partition_key=partition_key,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        tags={LAUNCHED_BY_TAG: AUTOMATION},  # as the sensors launch it: incremental
        raise_on_error=True,
    )
    elapsed = time.perf_counter() - started
    assert result.success
    return elapsed


def refresh_functions(
    spark, data_dir: Path, postgres_url: str, start: datetime, end: datetime
) -> dict[str, float]:
    """The assets' bodies called directly (no Dagster; the whole period, no ledger): per-step
    seconds."""
    from marketflow_assets.defs.indicators.assets import refresh_indicators
    from marketflow_assets.defs.indicators.movers import refresh_movers
    from marketflow_assets.resources.postgres import PostgresResource

    postgres = PostgresResource(url=postgres_url)
    raw_dir = Path(data_dir) / "raw_prices"
    started = time.perf_counter()
    ind = refresh_indicators(spark, raw_dir, postgres, start, end)
    mid = time.perf_counter()
    refresh_movers(spark, postgres, start, end)
    done = time.perf_counter()
    steps = {f"indicators.{k}": v for k, v in ind.seconds.items()}
    steps["indicators"] = mid - started
    steps["movers"] = done - mid
    steps["total"] = done - started
    return steps


def partition_key(start: datetime) -> str:
    from marketflow_assets.defs.common.partitions import PARTITION_FMT

    return start.strftime(PARTITION_FMT)
