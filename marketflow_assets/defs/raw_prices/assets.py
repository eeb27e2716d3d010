"""``raw_prices``: the raw Parquet dataset written by the Spark streaming job (external asset).

Dagster does not materialize it; the observation sensor (``sensors/raw_prices.py``) reports what
the streaming job added. Listing, pruning and reading the files:
:mod:`marketflow_assets.raw_dataset`.
"""

from __future__ import annotations

import dagster as dg

from marketflow_assets.defs.common.policies import raw_column_schema
from marketflow_assets.schema import RAW_PRICES_ASSET

RAW_PRICES_KEY = dg.AssetKey(RAW_PRICES_ASSET)

raw_prices = dg.AssetSpec(
    key=RAW_PRICES_KEY,
    description=(
        "Raw CoinGecko market snapshots as Parquet under `$MARKETFLOW_DATA_DIR/raw_prices/` "
        "(hive partitions `date=YYYY-MM-DD`, at most one row per (`id`, `ts`)), written exactly "
        "once by the Spark Structured Streaming job from Kafka topic `crypto_prices`. Observed "
        "by the `raw_prices_observation_sensor`."
    ),
    group_name="market_data",
    kinds={"parquet", "spark"},
    metadata={
        "dataset": "raw_prices/ (hive: date=YYYY-MM-DD)",
        "writer": "spark_streaming",
        "dagster/column_schema": raw_column_schema(),
    },
)
