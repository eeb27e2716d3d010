"""The one Definitions object of Marketflow: assets, checks, jobs, sensors, schedules, resources.

Packages only define things: ``defs/<domain>/`` (``raw_prices``, ``indicators``, ``forecasts``,
``monitoring``; each exports ``ASSETS, CHECKS, JOBS, SENSORS, SCHEDULES``), ``defs/maintenance.py``
and ``resources/``; this module is the only place that puts them together and applies the
cross-cutting policy: native freshness policies (the UI's freshness status) and the executor.
``dagster dev -w workspace.yaml``, ``dagster definitions validate`` and ``dagster asset
materialize -m marketflow_assets.definitions`` load exactly this module.

Nothing here needs configuration: resources resolve ``MARKETFLOW_*`` settings when a run or a
sensor first uses them (see ``settings.py``), with defaults for everything (``./data``, the
embedded PostgreSQL under ``./data/postgres``, local Spark). The only thing read when the module
loads is where the hourly partitions start (the first hour of raw data, see
``defs/common/partitions.py``); loading it never changes the process environment (``.env`` is
read as defaults, not exported). The native freshness policies use the default thresholds
(120 s / 300 s), fixed when the definitions load; ``MARKETFLOW_FRESHNESS_WARN_SECONDS`` /
``..._ERROR_SECONDS`` are applied at run time by the ``freshness_check`` asset checks and
``monitoring_checks_sensor``.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from marketflow_assets.defs import forecasts, indicators, maintenance, monitoring, raw_prices
from marketflow_assets.resources import (  # noqa: F401 - without_secrets_in_config re-exported
    build_resources,
    without_secrets_in_config,
)
from marketflow_assets.resources import postgres as _postgres_resource
from marketflow_assets.runtime.services import embedded_postgres_url
from marketflow_assets.schema import (
    FORECAST_EVALUATION_ASSET,
    FORECAST_MODEL_ASSET,
    MARKET_MOVERS_ASSET,
    PRICE_FORECASTS_ASSET,
    PRICE_INDICATORS_ASSET,
    RAW_PRICES_ASSET,
)
from marketflow_assets.settings import CheckSettings

#: Market-data assets (``raw_prices``, ``price_indicators``, ``market_movers``) and their
#: freshness and data-quality checks: what runs without the forecasts or a Kafka topic.
ASSETS = [*raw_prices.ASSETS, *indicators.ASSETS]
ASSET_CHECKS = [*monitoring.FRESHNESS_CHECKS, *raw_prices.CHECKS, *indicators.CHECKS]

#: Every domain's Dagster objects, listed here and nowhere else.
ALL_ASSETS = [*raw_prices.ASSETS, *indicators.ASSETS, *forecasts.ASSETS, *monitoring.ASSETS]
CHECKS = [*raw_prices.CHECKS, *indicators.CHECKS, *forecasts.CHECKS, *monitoring.CHECKS]
JOBS = [
    *raw_prices.JOBS,
    *indicators.JOBS,
    *forecasts.JOBS,
    *monitoring.JOBS,
    *maintenance.MAINTENANCE_JOBS,
]
SENSORS = [*raw_prices.SENSORS, *indicators.SENSORS, *forecasts.SENSORS, *monitoring.SENSORS]
SCHEDULES = [
    *raw_prices.SCHEDULES,
    *indicators.SCHEDULES,
    *forecasts.SCHEDULES,
    *monitoring.SCHEDULES,
    *maintenance.MAINTENANCE_SCHEDULES,
]
#: Assets that follow every poll: freshness thresholds of the data checks.
FRESH_ASSETS = (
    RAW_PRICES_ASSET,
    PRICE_INDICATORS_ASSET,
    MARKET_MOVERS_ASSET,
    PRICE_FORECASTS_ASSET,
)
#: Assets retrained hourly (``forecast_retrain_schedule``): WARN after 2 h, FAIL after 3 h.
HOURLY_ASSETS = (FORECAST_EVALUATION_ASSET, FORECAST_MODEL_ASSET)
HOURLY_POLICY = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=3), warn_window=timedelta(hours=2)
)
MIN_FRESHNESS_WINDOW_SECONDS = 60


def freshness_policy(settings: CheckSettings | None = None) -> dg.FreshnessPolicy:
    """Dagster's native freshness policy of the three assets: WARN / FAIL when the last
    materialization (for ``raw_prices``: the last report of new files by the observation sensor)
    is older than the thresholds of ``settings`` (default: the built-in 120 s / 300 s, so the
    definitions do not depend on the environment; Dagster's windows are at least 60 s). The
    ``freshness_check`` asset checks apply ``MARKETFLOW_FRESHNESS_WARN_SECONDS`` /
    ``..._ERROR_SECONDS`` at run time to the newest *data* timestamp, which says more after a
    backfill of old hours or a replay of an old recording."""
    settings = settings or CheckSettings()
    fail = max(settings.freshness_error_seconds, MIN_FRESHNESS_WINDOW_SECONDS + 1)
    warn = min(max(settings.freshness_warn_seconds, MIN_FRESHNESS_WINDOW_SECONDS), fail - 1)
    return dg.FreshnessPolicy.time_window(
        fail_window=timedelta(seconds=fail), warn_window=timedelta(seconds=warn)
    )


def with_freshness(assets: list, policy: dg.FreshnessPolicy) -> list:
    return dg.map_asset_specs(
        lambda spec: (
            dg.apply_freshness_policy(spec, policy)
            if spec.key.to_user_string() in FRESH_ASSETS
            else dg.apply_freshness_policy(spec, HOURLY_POLICY)
            if spec.key.to_user_string() in HOURLY_ASSETS
            else spec
        ),
        assets,
    )


# Without MARKETFLOW_POSTGRES_URL the PostgreSQL resource uses the embedded server, which the
# runtime starts (or finds running) - handed over here, the one place that wires the layers.
_postgres_resource.EMBEDDED_SERVER = embedded_postgres_url

defs = dg.Definitions(
    assets=with_freshness(ALL_ASSETS, freshness_policy()),
    asset_checks=CHECKS,
    jobs=JOBS,
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=build_resources(),
    # One process per run (asset jobs included): on 2 shared cores a subprocess per step costs
    # seconds each, and the steps run in sequence anyway (market_movers needs price_indicators).
    executor=dg.in_process_executor,
)
