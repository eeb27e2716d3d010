"""Forecast jobs: the hourly retraining and the cheap forecast with the stored model."""

from __future__ import annotations

import dagster as dg

from marketflow_assets.schema import (
    FORECAST_EVALUATION_ASSET,
    FORECAST_MODEL_ASSET,
    PRICE_FORECASTS_ASSET,
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

JOBS = [forecast_training_job, price_forecasts_job]
