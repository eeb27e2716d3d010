"""Market-data assets: ``raw_prices`` (external, observed), ``price_indicators``, ``market_movers``.

``defs`` bundles them with the job, sensors and schedule that keep them fresh: the observation
sensor reports new raw files, the automation sensor recomputes the partitions they touch, and the
schedule re-runs the recent hours.
"""

import dagster as dg

from marketflow_assets.assets.indicators import price_indicators
from marketflow_assets.assets.jobs import refresh_indicators_job
from marketflow_assets.assets.movers import market_movers
from marketflow_assets.assets.raw_prices import raw_prices
from marketflow_assets.schedules import recent_indicators_schedule
from marketflow_assets.sensors.automation import indicators_follow_raw_prices
from marketflow_assets.sensors.raw_prices import raw_prices_observation_sensor

defs = dg.Definitions(
    assets=[raw_prices, price_indicators, market_movers],
    jobs=[refresh_indicators_job],
    sensors=[raw_prices_observation_sensor, indicators_follow_raw_prices],
    schedules=[recent_indicators_schedule],
)
