"""``raw_prices``: the external raw Delta Lake table, its observation sensor and its checks.

* asset ``raw_prices`` (external, written by the Spark streaming job; ``assets.py``);
* sensor ``raw_prices_observation_sensor`` (``sensors.py``): reports the files the job added;
* checks ``prices_positive``, ``unique_id_ts`` (blocking), ``rows_per_poll_stable`` (``checks.py``).
"""

from marketflow_assets.defs.raw_prices.assets import raw_prices
from marketflow_assets.defs.raw_prices.checks import CHECKS as _CHECKS
from marketflow_assets.defs.raw_prices.sensors import raw_prices_observation_sensor

ASSETS = [raw_prices]
CHECKS = [*_CHECKS]
JOBS: list = []
SENSORS = [raw_prices_observation_sensor]
SCHEDULES: list = []

__all__ = ["ASSETS", "CHECKS", "JOBS", "SCHEDULES", "SENSORS"]
