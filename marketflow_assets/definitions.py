"""The one Definitions object of Marketflow: assets, checks, sensors, schedules and resources.

Each domain package contributes its own ``defs``; cross-cutting pieces (resources) are applied
here. ``dagster definitions validate -w workspace.yaml`` loads exactly this module.
"""

import dagster as dg

from marketflow_assets import assets, checks
from marketflow_assets.assets import forecasts
from marketflow_assets.checks import forecasts as forecast_checks
from marketflow_assets.resources import RESOURCES
from marketflow_assets.schedules.forecasts import forecast_retrain_schedule
from marketflow_assets.sensors.forecasts import (
    forecast_retrain_on_degradation,
    forecasts_follow_indicators,
)

defs = dg.Definitions.merge(
    assets.defs,
    checks.defs,
    dg.Definitions(  # forecasting: assets, jobs, automation
        assets=forecasts.ASSETS,
        asset_checks=forecast_checks.CHECKS,
        jobs=forecasts.JOBS,
        sensors=[forecasts_follow_indicators, forecast_retrain_on_degradation],
        schedules=[forecast_retrain_schedule],
    ),
    dg.Definitions(resources=RESOURCES),
)
