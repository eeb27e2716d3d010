"""The one place where the benchmarks call the project's code (assets, Spark, refresh).

Keeping the adapters here means a change of the assets' internals touches one file.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

logger = logging.getLogger(__name__)


def get_bench_spark():
    """The project's SparkSession (``marketflow_assets.spark.get_spark``: project conf, local).

    The Dagster ``PySparkResource`` of the assets is built from the same ``spark_conf()``, so a
    materialization in this process reuses this session (``getOrCreate``).
    """
    from marketflow_assets.spark import get_spark

    return get_spark(app_name="marketflow-bench")


def spark_indicators(spark, raw_dir: Path, start: datetime, end: datetime):
    """The assets' Spark indicator computation for ``[start, end)`` from scratch (no state):
    ``spark_compute.read_raw_window`` + ``spark_compute.indicators_dataframe`` (lazy)."""
    from marketflow_assets.assets.spark_compute import indicators_dataframe, read_raw_window

    raw_df = read_raw_window(spark, raw_dir, start, end)
    return indicators_dataframe(raw_df, None, start, end)


def materialize_partition(data_dir: Path, postgres_url: str, partition_key: str) -> float:
    """Materialize ``price_indicators`` + ``market_movers`` for one partition through Dagster
    (``dg.materialize``, in-process executor, ephemeral instance: what a sensor-triggered run
    executes, minus the run launcher's process start). Returns wall seconds."""
    import dagster as dg

    from marketflow_assets.assets.indicators import price_indicators
    from marketflow_assets.assets.movers import market_movers
    from marketflow_assets.definitions import build_resources

    resources = build_resources(postgres_url=postgres_url, data_dir=str(data_dir))
    started = time.perf_counter()
    result = dg.materialize(
        [price_indicators, market_movers],
        partition_key=partition_key,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=True,
    )
    elapsed = time.perf_counter() - started
    assert result.success
    return elapsed


def refresh_functions(
    spark, data_dir: Path, postgres_url: str, start: datetime, end: datetime
) -> dict[str, float]:
    """The assets' bodies called directly (no Dagster): per-step seconds."""
    from marketflow_assets.assets.indicators import refresh_indicators
    from marketflow_assets.assets.movers import refresh_movers
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
    from marketflow_assets.assets.partitions import PARTITION_FMT

    return start.strftime(PARTITION_FMT)
