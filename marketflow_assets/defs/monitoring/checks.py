"""Freshness checks on ``raw_prices``, ``price_indicators`` and ``market_movers``.

Age is measured from the data itself — the newest ``ts`` in the raw Parquet dataset, the newest
``ts`` / ``snapshot_ts`` in PostgreSQL — not from Dagster materialization events. ``raw_prices``
is written by the Spark job outside Dagster, and the tables can be written by ``marketflow
refresh`` or a backfill; only the data knows how recent it really is (a materialization of an
old partition is not fresh data).

* age <= ``MARKETFLOW_FRESHNESS_WARN_SECONDS`` (default 120 s = 4 missed 30 s polls): pass;
* age >  warn: fail with severity WARN;
* age >  ``MARKETFLOW_FRESHNESS_ERROR_SECONDS`` (default 300 s) or no data at all: fail, ERROR.

No data *yet* is a warm-up, not a failure (the check passes and says "Warming up: ..."): the
movers while ``price_indicators`` holds less than five minutes of prices (plus the error
threshold), the indicators while the oldest raw row is younger than the error threshold, and
any of the three within ``MARKETFLOW_ALERT_STARTUP_GRACE_SECONDS`` of the code location's load
(``marketflow up`` starting it). After that, no data is a failure.

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
from marketflow_assets.defs.common.tables import newest_ts, table_exists
from marketflow_assets.raw_dataset import newest_raw_ts, oldest_raw_ts
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.schema import (
    ASSET_TABLES,
    MARKET_MOVERS_ASSET,
    PRICE_INDICATORS_ASSET,
    RAW_PRICES_ASSET,
)
from marketflow_assets.settings import load_monitoring_settings

CHECK_NAME = "freshness_check"
MOVERS_WINDOW_S = 300  # change_5min, hence the movers, needs prices five minutes apart
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
    newest: datetime | None,
    now: datetime,
    settings: CheckSettings,
    source: str,
    warming_up: str | None = None,
) -> Outcome:
    """Classify the age ``now - newest`` against the warn/error thresholds of ``settings``;
    no data passes while ``warming_up`` says why it cannot be there yet."""
    thresholds = {
        "warn_after_seconds": settings.freshness_warn_seconds,
        "error_after_seconds": settings.freshness_error_seconds,
        "measured_from": source,
        "evaluated_at": now.isoformat(),
    }
    if newest is None and warming_up:
        return Outcome(
            True,
            f"Warming up: {warming_up} ({source} is empty).",
            {**thresholds, "no_data": True, "warming_up": True},
        )
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


def _oldest_indicator_ts(postgres: PostgresResource) -> datetime | None:
    with postgres.get_connection() as conn:
        if not table_exists(conn, "price_indicators"):
            return None
        with conn.cursor() as cur:
            cur.execute("SELECT min(ts) FROM price_indicators")
            return cur.fetchone()[0]


def warm_up_reason(
    asset: dg.AssetKey,
    now: datetime,
    settings: CheckSettings,
    postgres: PostgresResource | None = None,
    raw_dir: Path | None = None,
    loaded_at: float | None = None,
) -> str | None:
    """Why ``asset`` can have no data yet at ``now`` (its upstream only just started), or None
    when its absence is a failure. Called only when the asset has no data."""
    if loaded_at is not None:
        since_load = now.timestamp() - loaded_at
        grace = load_monitoring_settings().startup_grace_seconds
        if 0 <= since_load <= grace:
            return f"{since_load:.0f} s after the start (start-up grace {grace:g} s)"
    error_s = settings.freshness_error_seconds
    if asset == MOVERS and postgres is not None:
        first = _oldest_indicator_ts(postgres)
        if first is not None and (now - first).total_seconds() <= MOVERS_WINDOW_S + error_s:
            return (
                "the movers compare prices five minutes apart; the first prices are from "
                f"{first.isoformat()}"
            )
    if asset == INDICATORS and raw_dir is not None:
        first = oldest_raw_ts(raw_dir)
        if first is not None and (now - first).total_seconds() <= error_s:
            return f"the first refresh follows the first raw rows ({first.isoformat()})"
    return None


def asset_freshness(
    asset: dg.AssetKey,
    now: datetime,
    postgres: PostgresResource | None = None,
    raw_dir: Path | None = None,
    settings: CheckSettings | None = None,
    loaded_at: float | None = None,
) -> Outcome:
    """The freshness of ``asset``; with no data, a warm-up (:func:`warm_up_reason`) passes.
    ``loaded_at``: when the evaluating code location loaded (the start-up grace origin)."""
    settings = settings or load_check_settings()
    newest = newest_data_ts(asset, postgres, raw_dir)
    warming_up = None
    if newest is None:
        warming_up = warm_up_reason(asset, now, settings, postgres, raw_dir, loaded_at)
    return freshness_outcome(newest, now, settings, SOURCES[asset], warming_up)


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
