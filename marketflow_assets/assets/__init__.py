"""Market-data assets: ``raw_prices`` (external, observed), ``price_indicators``, ``market_movers``.

``ASSETS`` lists them; ``definitions.py`` assembles them with the job, sensors and schedule that
keep them fresh.
"""

from marketflow_assets.assets.indicators import price_indicators
from marketflow_assets.assets.movers import market_movers
from marketflow_assets.assets.raw_prices import raw_prices

ASSETS = [raw_prices, price_indicators, market_movers]

__all__ = ["ASSETS", "market_movers", "price_indicators", "raw_prices"]
