"""Freshness and data-quality checks (the sensors that keep them current are in ``sensors/``).

* freshness (``freshness_check`` on ``raw_prices``, ``price_indicators``, ``market_movers``):
  age of the newest data vs. ``MARKETFLOW_FRESHNESS_WARN_SECONDS`` / ``..._ERROR_SECONDS``;
* ``raw_prices``: ``prices_positive``, ``unique_id_ts`` (blocking), ``rows_per_poll_stable``;
* ``price_indicators``: ``prices_positive``, ``unique_coin_ts`` (blocking; they stop
  ``market_movers`` in the same run), ``sma_within_window_range``, ``volatility_non_negative``;
* ``market_movers``: ``at_most_five_per_direction``, ``movers_sorted``;
* ``price_indicators_reconciled``: raw rows per hour equal indicator rows per hour, all hours
  (not in ``refresh_indicators_job``; ``reconciliation_sensor`` repairs what it finds).

``ASSET_CHECKS`` lists them all; ``definitions.py`` assembles them with the jobs
(``monitoring_checks_job``, ``all_checks_job``) and sensors (``monitoring_checks_sensor``,
``marketflow_alert_sensor``) that use them.
"""

from marketflow_assets.checks import market_movers, price_indicators, raw_prices, reconciliation
from marketflow_assets.checks.freshness import FRESHNESS_CHECK_KEYS, FRESHNESS_CHECKS

ASSET_CHECKS = [
    *FRESHNESS_CHECKS,
    *raw_prices.CHECKS,
    *price_indicators.CHECKS,
    *market_movers.CHECKS,
    *reconciliation.CHECKS,
]

__all__ = [
    "ASSET_CHECKS",
    "FRESHNESS_CHECK_KEYS",
    "market_movers",
    "price_indicators",
    "raw_prices",
    "reconciliation",
]
