"""``price_indicators_reconciled``: raw rows per hour equal ``price_indicators`` rows per hour.

Compares every hour of the history (:mod:`marketflow_assets.reconcile`), except the hours still
being refreshed (ending less than ``reconcile.SETTLE`` ago). Fails naming the differing hours;
``reconciliation_sensor`` requests the runs that repair them. Not part of
``refresh_indicators_job`` (it reads the whole dataset): run it from ``all_checks_job`` or the UI.
"""

from __future__ import annotations

import dagster as dg

from marketflow_assets import reconcile
from marketflow_assets.defs.common.outcome import Outcome
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.schema import PRICE_INDICATORS_ASSET

CHECK_NAME = "price_indicators_reconciled"
ASSET = dg.AssetKey(PRICE_INDICATORS_ASSET)
CHECK_KEY = dg.AssetCheckKey(ASSET, CHECK_NAME)
#: Differing hours listed in the metadata (the count is always complete).
LISTED = 50


def reconciled_outcome(conn, raw_dir, now=None) -> Outcome:
    """Pass when every settled hour has as many ``price_indicators`` rows as raw rows."""
    raw = reconcile.raw_rows_per_hour(raw_dir)
    stored = reconcile.indicator_rows_per_hour(conn)
    before = reconcile.settled_before(now)
    diffs = reconcile.differing_hours(raw, stored, before)
    compared = sum(1 for h in set(raw) | set(stored) if h + reconcile.HOUR <= before)
    metadata = {
        "hours_compared": compared,
        "differing_hours": len(diffs),
        "raw_rows": sum(raw.values()),
        "indicator_rows": sum(stored.values()),
        "hours": "\n".join(d.describe() for d in diffs[:LISTED]) or "none",
    }
    if not diffs:
        return Outcome(True, f"All {compared} hours reconciled.", metadata)
    shown = ", ".join(f"{d.hour:%Y-%m-%d %H:00}" for d in diffs[:5])
    more = f" and {len(diffs) - 5} more" if len(diffs) > 5 else ""
    return Outcome(
        False,
        f"{len(diffs)} of {compared} hours differ between raw_prices and price_indicators:"
        f" {shown}{more} UTC (reconciliation_sensor re-materializes them).",
        metadata,
    )


@dg.asset_check(
    asset=ASSET,
    name=CHECK_NAME,
    description="Raw rows per hour (distinct (id, ts) with a price) equal price_indicators rows "
    "per hour, over all hours; fails listing the hours that differ.",
    metadata={"table": "price_indicators", "scope": "all hours"},
)
def price_indicators_reconciled(
    postgres: PostgresResource, raw_data: RawDataResource
) -> dg.AssetCheckResult:
    with postgres.get_connection() as conn:
        outcome = reconciled_outcome(conn, raw_data.raw_dir)
    return outcome.to_result()


CHECKS = [price_indicators_reconciled]
