"""Freshness and data-quality checks, the sensors that keep them current and raise alerts.

* freshness (``freshness_check`` on ``raw_prices``, ``price_indicators``, ``market_movers``):
  age of the newest data vs. ``MARKETFLOW_FRESHNESS_WARN_SECONDS`` / ``..._ERROR_SECONDS``;
* ``raw_prices``: ``prices_positive``, ``unique_id_ts`` (blocking), ``rows_per_poll_stable``;
* ``price_indicators``: ``prices_positive``, ``unique_coin_ts`` (blocking; they stop
  ``market_movers`` in the same run), ``sma_within_window_range``, ``volatility_non_negative``;
* ``market_movers``: ``at_most_five_per_direction``, ``movers_sorted``;
* ``monitoring_checks_sensor`` evaluates freshness + raw checks every minute (no runs);
  ``monitoring_checks_job`` runs the same checks on demand, ``all_checks_job`` every check;
* ``marketflow_alert_sensor`` alerts once per check/job state change (log + optional webhook).
"""

import dagster as dg

from marketflow_assets.checks import market_movers, price_indicators, raw_prices
from marketflow_assets.checks.freshness import FRESHNESS_CHECK_KEYS, FRESHNESS_CHECKS
from marketflow_assets.sensors.alerts import marketflow_alert_sensor
from marketflow_assets.sensors.freshness import monitoring_checks_sensor

ASSET_CHECKS = [
    *FRESHNESS_CHECKS,
    *raw_prices.CHECKS,
    *price_indicators.CHECKS,
    *market_movers.CHECKS,
]

monitoring_checks_job = dg.define_asset_job(
    "monitoring_checks_job",
    selection=dg.AssetSelection.checks(*FRESHNESS_CHECK_KEYS)
    | dg.AssetSelection.checks(*raw_prices.CHECKS),
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

defs = dg.Definitions(
    asset_checks=ASSET_CHECKS,
    sensors=[monitoring_checks_sensor, marketflow_alert_sensor],
    jobs=[monitoring_checks_job, all_checks_job],
)
