"""Jobs of the code location: the indicator refresh (used by the automation sensor, the schedule
and backfills) and the check-only jobs (run on demand)."""

from __future__ import annotations

import dagster as dg

from marketflow_assets.assets.partitions import PARTITION_FMT
from marketflow_assets.checks import raw_prices as raw_checks
from marketflow_assets.checks.freshness import CHECK_NAME, FRESHNESS_CHECK_KEYS
from marketflow_assets.schema import (
    FORECAST_EVALUATION_ASSET,
    FORECAST_MODEL_ASSET,
    MARKET_MOVERS_ASSET,
    PRICE_FORECASTS_ASSET,
    PRICE_INDICATORS_ASSET,
)

INDICATOR_ASSETS = dg.AssetSelection.assets(PRICE_INDICATORS_ASSET, MARKET_MOVERS_ASSET)
_FRESHNESS_CHECKS = dg.AssetSelection.checks(
    *(
        dg.AssetCheckKey(dg.AssetKey(a), CHECK_NAME)
        for a in (PRICE_INDICATORS_ASSET, MARKET_MOVERS_ASSET)
    )
)

#: ``checks/reconciliation.py``: it reads every hour of the dataset, not what a refresh wrote.
_RECONCILED_CHECK = dg.AssetSelection.checks(
    dg.AssetCheckKey(dg.AssetKey(PRICE_INDICATORS_ASSET), "price_indicators_reconciled")
)

refresh_indicators_job = dg.define_asset_job(
    "refresh_indicators_job",
    # The freshness checks are evaluated every minute by monitoring_checks_sensor; running them
    # in every refresh too would only add steps.
    # The reconciliation check compares the whole history: on demand and by its sensor only.
    selection=INDICATOR_ASSETS - _FRESHNESS_CHECKS - _RECONCILED_CHECK,
    description="Recompute price_indicators and market_movers for a partition (range), in order.",
    tags={"marketflow/pipeline": "indicators"},
    # One process per run: the steps are sequential anyway (market_movers needs price_indicators,
    # blocking checks sit between them) and a subprocess per step would cost seconds each.
    executor_def=dg.in_process_executor,
)

monitoring_checks_job = dg.define_asset_job(
    "monitoring_checks_job",
    selection=dg.AssetSelection.checks(*FRESHNESS_CHECK_KEYS)
    | dg.AssetSelection.checks(*raw_checks.CHECKS),
    description="Freshness checks of the three assets and the raw_prices quality checks.",
    tags={"marketflow/kind": "checks"},
)

all_checks_job = dg.define_asset_job(
    "all_checks_job",
    selection=dg.AssetSelection.all_asset_checks(),
    description=(
        "Every asset check on the latest data (MARKETFLOW_CHECK_WINDOW_HOURS), without"
        " materializing anything."
    ),
    tags={"marketflow/kind": "checks"},
)

forecast_training_job = dg.define_asset_job(
    "forecast_training_job",
    selection=dg.AssetSelection.assets(
        FORECAST_EVALUATION_ASSET, FORECAST_MODEL_ASSET, PRICE_FORECASTS_ASSET
    ),
    description="Backtest + gate, fit the promoted model, forecast the newest snapshot.",
    tags={"marketflow/pipeline": "forecast"},
    executor_def=dg.in_process_executor,
)

price_forecasts_job = dg.define_asset_job(
    "price_forecasts_job",
    selection=dg.AssetSelection.assets(PRICE_FORECASTS_ASSET),
    description="Forecast the newest snapshot with the stored model (no training).",
    tags={"marketflow/pipeline": "forecast"},
    executor_def=dg.in_process_executor,
)

JOBS = [
    refresh_indicators_job,
    monitoring_checks_job,
    all_checks_job,
    forecast_training_job,
    price_forecasts_job,
]

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_range_tags(first_key: str, last_key: str) -> dict[str, str]:
    """Run tags that make one run cover partitions ``first_key..last_key`` (inclusive)."""
    return {RANGE_START_TAG: first_key, RANGE_END_TAG: last_key}


def partition_key_for(ts) -> str:
    """Hourly partition key holding time ``ts`` (tz-aware UTC)."""
    return ts.replace(minute=0, second=0, microsecond=0).strftime(PARTITION_FMT)
