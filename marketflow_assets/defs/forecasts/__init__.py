"""Forecasts: ``forecast_evaluation`` -> ``forecast_model`` -> ``price_forecasts``.

Assets (``assets.py``), their checks (``checks.py``), ``forecast_training_job`` and
``price_forecasts_job`` (``jobs.py``), the sensors ``forecasts_follow_indicators`` and
``forecast_retrain_on_degradation`` (``sensors.py``), the hourly ``forecast_retrain_schedule``
(``schedules.py``) and ``marketflow forecast`` (``command.py``).
"""

from marketflow_assets.defs.forecasts.assets import FORECAST_ASSETS
from marketflow_assets.defs.forecasts.checks import FORECAST_CHECKS
from marketflow_assets.defs.forecasts.jobs import JOBS as _JOBS
from marketflow_assets.defs.forecasts.schedules import forecast_retrain_schedule
from marketflow_assets.defs.forecasts.sensors import (
    forecast_retrain_on_degradation,
    forecasts_follow_indicators,
)

ASSETS = [*FORECAST_ASSETS]
CHECKS = [*FORECAST_CHECKS]
JOBS = [*_JOBS]
SENSORS = [forecasts_follow_indicators, forecast_retrain_on_degradation]
SCHEDULES = [forecast_retrain_schedule]

__all__ = ["ASSETS", "CHECKS", "JOBS", "SCHEDULES", "SENSORS"]
