"""Market-data assets: ``raw_prices`` (external, observed), ``price_indicators``, ``market_movers``.

``defs`` bundles them with the job, sensors and schedule that keep them fresh.
"""

from __future__ import annotations

import dagster as dg

from marketflow_assets.assets.indicators import price_indicators
from marketflow_assets.assets.jobs import refresh_indicators_job
from marketflow_assets.assets.movers import market_movers
from marketflow_assets.assets.raw_prices import raw_prices

defs = dg.Definitions(
    assets=[raw_prices, price_indicators, market_movers],
    jobs=[refresh_indicators_job],
)
