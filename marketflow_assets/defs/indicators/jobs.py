"""The indicator refresh job (used by the automation sensor, the schedule, the follower and
backfills) and the run tags of a partition range."""

from __future__ import annotations

import dagster as dg

from marketflow_assets.defs.common.partitions import PARTITION_FMT, floor_hour
from marketflow_assets.defs.monitoring.checks import CHECK_NAME
from marketflow_assets.schema import MARKET_MOVERS_ASSET, PRICE_INDICATORS_ASSET

INDICATOR_ASSETS = dg.AssetSelection.assets(PRICE_INDICATORS_ASSET, MARKET_MOVERS_ASSET)
_FRESHNESS_CHECKS = dg.AssetSelection.checks(
    *(
        dg.AssetCheckKey(dg.AssetKey(a), CHECK_NAME)
        for a in (PRICE_INDICATORS_ASSET, MARKET_MOVERS_ASSET)
    )
)
#: ``reconciliation_checks.py``: it reads every hour of the dataset, not what a refresh wrote.
_RECONCILED_CHECK = dg.AssetSelection.checks(
    dg.AssetCheckKey(dg.AssetKey(PRICE_INDICATORS_ASSET), "price_indicators_reconciled")
)

refresh_indicators_job = dg.define_asset_job(
    "refresh_indicators_job",
    # The freshness checks are evaluated every minute by monitoring_checks_sensor; running them
    # in every refresh too would only add steps.
    # The reconciliation check compares the whole history: on demand and by its sensor only.
    selection=INDICATOR_ASSETS - _FRESHNESS_CHECKS - _RECONCILED_CHECK,
    description="Recompute price_indicators and market_movers for a partition (range), in order.",
    tags={"marketflow/pipeline": "indicators"},
    # One process per run: the steps are sequential anyway (market_movers needs price_indicators,
    # blocking checks sit between them) and a subprocess per step would cost seconds each.
    executor_def=dg.in_process_executor,
)

JOBS = [refresh_indicators_job]

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_range_tags(first_key: str, last_key: str) -> dict[str, str]:
    """Run tags that make one run cover partitions ``first_key..last_key`` (inclusive)."""
    return {RANGE_START_TAG: first_key, RANGE_END_TAG: last_key}


def partition_key_for(ts) -> str:
    """Hourly partition key holding time ``ts`` (tz-aware UTC)."""
    return floor_hour(ts).strftime(PARTITION_FMT)
