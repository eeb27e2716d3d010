"""Monitoring: freshness and stream checks, the sensors that keep them current, alerts, history.

* ``freshness_check`` on ``raw_prices``, ``price_indicators``, ``market_movers`` (``checks.py``)
  and the stream checks ``stream_lag``, ``dead_letter_rate``, ``reject_rate`` on ``raw_prices``
  (``stream_checks.py``);
* sensors ``monitoring_checks_sensor`` (``sensors.py``), ``stream_health_sensor``
  (``stream_sensors.py``) and ``marketflow_alert_sensor`` (``alerts.py``); what they see is also
  written to PostgreSQL for the dashboard (``history.py``);
* the check-only jobs ``monitoring_checks_job`` and ``all_checks_job`` (``jobs.py``).
"""

from marketflow_assets.defs.monitoring.alerts import marketflow_alert_sensor
from marketflow_assets.defs.monitoring.checks import FRESHNESS_CHECKS
from marketflow_assets.defs.monitoring.jobs import JOBS as _JOBS
from marketflow_assets.defs.monitoring.sensors import monitoring_checks_sensor
from marketflow_assets.defs.monitoring.stream_checks import STREAM_CHECKS
from marketflow_assets.defs.monitoring.stream_sensors import stream_health_sensor

ASSETS: list = []
CHECKS = [*FRESHNESS_CHECKS, *STREAM_CHECKS]
JOBS = [*_JOBS]
SENSORS = [monitoring_checks_sensor, marketflow_alert_sensor, stream_health_sensor]
SCHEDULES: list = []

__all__ = ["ASSETS", "CHECKS", "JOBS", "SCHEDULES", "SENSORS"]
