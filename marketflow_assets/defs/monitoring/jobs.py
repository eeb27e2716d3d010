"""Check-only jobs (run on demand; the sensors evaluate the same checks without runs)."""

from __future__ import annotations

import dagster as dg

from marketflow_assets.defs.monitoring.checks import FRESHNESS_CHECK_KEYS
from marketflow_assets.defs.raw_prices import checks as raw_checks

monitoring_checks_job = dg.define_asset_job(
    "monitoring_checks_job",
    selection=dg.AssetSelection.checks(*FRESHNESS_CHECK_KEYS)
    | dg.AssetSelection.checks(*raw_checks.CHECKS),
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

JOBS = [monitoring_checks_job, all_checks_job]
