"""``price_indicators`` and ``market_movers``: assets, checks, jobs, automation, commands.

* assets ``price_indicators`` (``assets.py``) and ``market_movers`` (``movers.py``), hourly
  partitions, refreshed incrementally (``incremental.py``, ``compute.py``);
* checks of ``price_indicators`` (``checks.py``) and ``market_movers`` (``movers_checks.py``);
* ``refresh_indicators_job`` (``jobs.py``), started by the automation sensor
  ``indicators_follow_raw_prices`` (``sensors.py``), the schedule ``recent_indicators_schedule``
  (``schedules.py``) and the live follower (``follow.py``, ``marketflow follow``);
* ``marketflow refresh`` (``refresh.py``);
* reconciliation of raw rows per hour with ``price_indicators`` rows per hour: the check
  ``price_indicators_reconciled`` (``reconciliation_checks.py``) and ``reconciliation_sensor``
  (``reconciliation_sensor.py``), which re-materializes every hour whose counts differ.
"""

from marketflow_assets.defs.indicators import checks as _indicator_checks
from marketflow_assets.defs.indicators import movers_checks as _movers_checks
from marketflow_assets.defs.indicators import reconciliation_checks as _reconciliation_checks
from marketflow_assets.defs.indicators.assets import price_indicators
from marketflow_assets.defs.indicators.jobs import refresh_indicators_job
from marketflow_assets.defs.indicators.movers import market_movers
from marketflow_assets.defs.indicators.reconciliation_sensor import reconciliation_sensor
from marketflow_assets.defs.indicators.schedules import recent_indicators_schedule
from marketflow_assets.defs.indicators.sensors import indicators_follow_raw_prices

ASSETS = [price_indicators, market_movers]
CHECKS = [*_indicator_checks.CHECKS, *_movers_checks.CHECKS, *_reconciliation_checks.CHECKS]
JOBS = [refresh_indicators_job]
SENSORS = [indicators_follow_raw_prices, reconciliation_sensor]
SCHEDULES = [recent_indicators_schedule]

__all__ = ["ASSETS", "CHECKS", "JOBS", "SCHEDULES", "SENSORS"]
