"""The one Definitions object of Marketflow: assets, checks, jobs, sensors, schedules, resources.

Packages only define things (``assets/``, ``checks/``, ``sensors/``, ``schedules/``,
``resources/``); this module is the only place that puts them together.
``dagster definitions validate -w workspace.yaml`` and ``dagster asset materialize -m
marketflow_assets.definitions`` load exactly this module.
"""

from __future__ import annotations

import os

import dagster as dg

from marketflow_assets.assets import ASSETS
from marketflow_assets.checks import ASSET_CHECKS
from marketflow_assets.jobs import JOBS
from marketflow_assets.resources import PostgresResource, RawDataResource, SparkResource
from marketflow_assets.schedules.indicators import recent_indicators_schedule
from marketflow_assets.sensors.alerts import marketflow_alert_sensor
from marketflow_assets.sensors.automation import indicators_follow_raw_prices
from marketflow_assets.sensors.freshness import monitoring_checks_sensor
from marketflow_assets.sensors.raw_prices import raw_prices_observation_sensor
from marketflow_assets.settings import parse_local_max_rows
from marketflow_assets.spark import ensure_pyspark_python, spark_conf
from marketflow_assets.spark_connect import SPARK_REMOTE_ENV

ensure_pyspark_python()  # Spark's Python workers must run this interpreter (the venv)

SENSORS = [
    raw_prices_observation_sensor,
    indicators_follow_raw_prices,
    monitoring_checks_sensor,
    marketflow_alert_sensor,
]
SCHEDULES = [recent_indicators_schedule]


def pyspark_config() -> dict[str, str]:
    """``spark_config`` of the ``pyspark`` resource (read when the definitions load)."""
    remote = os.environ.get(SPARK_REMOTE_ENV, "").strip()
    if remote:
        return {"spark.remote": remote}
    return spark_conf()


def build_resources(
    postgres_url: str | dg.EnvVar | None = None, data_dir: str | dg.EnvVar | None = None
) -> dict[str, dg.ConfigurableResource]:
    """Resource dict; defaults read the environment at run time (``dg.EnvVar``)."""
    limit = parse_local_max_rows(os.environ.get("MARKETFLOW_LOCAL_MAX_ROWS"))
    local = {} if limit is None else {"local_max_rows": limit}
    return {
        "postgres": PostgresResource(url=postgres_url or dg.EnvVar("MARKETFLOW_POSTGRES_URL")),
        "raw_data": RawDataResource(data_dir=data_dir or dg.EnvVar("MARKETFLOW_DATA_DIR")),
        "pyspark": SparkResource(spark_config=pyspark_config(), **local),
    }


defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=build_resources(),
)
