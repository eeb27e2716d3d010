"""``raw_prices``: the Delta Lake table written by the Spark streaming job (external asset).

Dagster does not materialize it; the observation sensor (``sensors.py``) reports each new table
version (the data version) and what the streaming job committed. Snapshots, listing and reading:
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
        "Raw CoinGecko market snapshots: a Delta Lake table at `$MARKETFLOW_DATA_DIR/raw_prices/` "
        "(partitioned by `date`, at most one row per (`id`, `ts`)), one transaction per Spark "
        "micro-batch from Kafka topic `crypto_prices`, exactly once. Observed by the "
        "`raw_prices_observation_sensor` (data version = table version); read only through a "
        "pinned table version."
    ),
    group_name="market_data",
    kinds={"delta", "spark"},
    metadata={
        "dataset": "raw_prices/ (Delta Lake table, partitioned by date)",
        "writer": "spark_streaming",
        "dagster/column_schema": raw_column_schema(),
    },
)
