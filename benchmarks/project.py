"""The one place where the benchmarks call the project's code (assets, Spark, refresh).

Keeping the adapters here means a change of the assets' internals touches one file.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

INDICATOR_SPARK_DDL = (
    "coin_id string, symbol string, ts timestamp, price double, change_1min double, "
    "change_5min double, sma_5min double, ema_3min double, volatility_5min double"
)


def get_bench_spark():
    """The project's SparkSession (``marketflow_assets.spark.get_spark``: project conf, local)."""
    from marketflow_assets.spark import get_spark

    return get_spark(app_name="marketflow-bench")


def spark_indicators(spark, raw_df):
    """The project's Spark indicator computation on a raw-Parquet DataFrame (all rows)."""
    from marketflow_assets import indicators

    columns = list(indicators.RAW_INPUT_COLUMNS)

    def per_coin(frame):
        return indicators.compute_indicators(frame)

    return raw_df.select(*columns).groupBy("id").applyInPandas(per_coin, INDICATOR_SPARK_DDL)
