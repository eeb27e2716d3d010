"""Freshness checks on ``raw_prices``, ``price_indicators`` and ``market_movers``.

Age is measured from the data itself — the newest ``ts`` in the raw Parquet dataset, the newest
``ts`` / ``snapshot_ts`` in PostgreSQL — not from Dagster materialization events. ``raw_prices``
is written by the Spark job outside Dagster, and the tables can be written by ``marketflow
refresh`` or a backfill; only the data knows how recent it really is (a materialization of an
old partition is not fresh data).

* age <= ``MARKETFLOW_FRESHNESS_WARN_SECONDS`` (default 120 s = 4 missed 30 s polls): pass;
* age >  warn: fail with severity WARN;
* age >  ``MARKETFLOW_FRESHNESS_ERROR_SECONDS`` (default 300 s) or no data at all: fail, ERROR.

The checks are ordinary executable asset checks (runnable from the UI or a job); the
``monitoring_checks_sensor`` (``defs/monitoring/sensors.py``) evaluates the same functions every
minute and records the results, so a stalled stage turns red without anyone clicking.
"""

from datetime import datetime
from pathlib import Path

import dagster as dg

from marketflow_assets.defs.common.outcome import (
    ENV_FRESHNESS_ERROR,
    ENV_FRESHNESS_WARN,
    CheckSettings,
    Clock,
    Outcome,
    load_check_settings,
    utc_now,
)
from marketflow_assets.defs.common.tables import newest_ts
from marketflow_assets.raw_dataset import newest_raw_ts
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.schema import (
    ASSET_TABLES,
    MARKET_MOVERS_ASSET,
    PRICE_INDICATORS_ASSET,
    RAW_PRICES_ASSET,
)

CHECK_NAME = "freshness_check"
RAW = dg.AssetKey(RAW_PRICES_ASSET)
INDICATORS = dg.AssetKey(PRICE_INDICATORS_ASSET)
MOVERS = dg.AssetKey(MARKET_MOVERS_ASSET)
#: asset -> (table, timestamp column) for the PostgreSQL-backed assets.
TABLE_COLUMNS = {dg.AssetKey(name): table for name, table in ASSET_TABLES.items()}
SOURCES = {
    RAW: "max(ts) in the raw_prices Parquet dataset",
    INDICATORS: "max(ts) in table price_indicators",
    MOVERS: "max(snapshot_ts) in table market_movers",
}


def freshness_outcome(
    newest: datetime | None, now: datetime, settings: CheckSettings, source: str
) -> Outcome:
    """Classify the age ``now - newest`` against the warn/error thresholds of ``settings``."""
    thresholds = {
        "warn_after_seconds": settings.freshness_warn_seconds,
        "error_after_seconds": settings.freshness_error_seconds,
        "measured_from": source,
        "evaluated_at": now.isoformat(),
    }
    if newest is None:
        return Outcome(False, f"No data yet ({source} is empty).", {**thresholds, "no_data": True})
    age = (now - newest).total_seconds()
    metadata = {**thresholds, "newest": newest.isoformat(), "age_seconds": round(age, 3)}
    if age > settings.freshness_error_seconds:
        return Outcome(
            False,
            f"Stale: newest data is {age:.0f} s old (> {settings.freshness_error_seconds:g} s,"
            f" {ENV_FRESHNESS_ERROR}).",
            metadata,
        )
    if age > settings.freshness_warn_seconds:
        return Outcome(
            False,
            f"Late: newest data is {age:.0f} s old (> {settings.freshness_warn_seconds:g} s,"
            f" {ENV_FRESHNESS_WARN}).",
            metadata,
            severity=dg.AssetCheckSeverity.WARN,
        )
    return Outcome(True, f"Fresh: newest data is {age:.0f} s old.", metadata)


def newest_data_ts(
    asset: dg.AssetKey, postgres: PostgresResource | None, raw_dir: Path | None
) -> datetime | None:
    """Newest data timestamp of ``asset`` (see :data:`SOURCES`)."""
    if asset == RAW:
        return newest_raw_ts(raw_dir)
    table, column = TABLE_COLUMNS[asset]
    with postgres.get_connection() as conn:
        return newest_ts(conn, table, column)


def asset_freshness(
    asset: dg.AssetKey,
    now: datetime,
    postgres: PostgresResource | None = None,
    raw_dir: Path | None = None,
    settings: CheckSettings | None = None,
) -> Outcome:
    settings = settings or load_check_settings()
    return freshness_outcome(
        newest_data_ts(asset, postgres, raw_dir), now, settings, SOURCES[asset]
    )


def build_freshness_checks(clock: Clock = utc_now) -> list[dg.AssetChecksDefinition]:
    """The three freshness checks; ``clock`` gives "now" (tests pass a controllable one)."""
    description = (
        "Fails (WARN) when the newest data is older than MARKETFLOW_FRESHNESS_WARN_SECONDS"
        " (default 120) and (ERROR) older than MARKETFLOW_FRESHNESS_ERROR_SECONDS (default 300)."
    )

    @dg.asset_check(
        asset=RAW, name=CHECK_NAME, description=description, metadata={"source": SOURCES[RAW]}
    )
    def raw_prices_freshness(raw_data: RawDataResource) -> dg.AssetCheckResult:
        return asset_freshness(RAW, clock(), raw_dir=raw_data.raw_dir).to_result()

    @dg.asset_check(
        asset=INDICATORS,
        name=CHECK_NAME,
        description=description,
        metadata={"source": SOURCES[INDICATORS]},
    )
    def price_indicators_freshness(postgres: PostgresResource) -> dg.AssetCheckResult:
        return asset_freshness(INDICATORS, clock(), postgres=postgres).to_result()

    @dg.asset_check(
        asset=MOVERS, name=CHECK_NAME, description=description, metadata={"source": SOURCES[MOVERS]}
    )
    def market_movers_freshness(postgres: PostgresResource) -> dg.AssetCheckResult:
        return asset_freshness(MOVERS, clock(), postgres=postgres).to_result()

    return [raw_prices_freshness, price_indicators_freshness, market_movers_freshness]


FRESHNESS_CHECKS = build_freshness_checks()
FRESHNESS_CHECK_KEYS = [dg.AssetCheckKey(asset, CHECK_NAME) for asset in SOURCES]
