"""``monitoring_checks_sensor``: keeps the freshness and raw-data checks current without runs.

Every minute it evaluates the freshness checks of ``raw_prices``, ``price_indicators`` and
``market_movers`` and the ``raw_prices`` quality checks with the same plain functions the
asset checks use, and records the results as run-less asset check evaluations. So a stalled
stage turns red in the UI within a minute of crossing its threshold, with no clicking and no
run process per evaluation (cheap on a 2-core machine next to Spark). The same checks stay
executable on demand (``monitoring_checks_job`` or "Execute" in the UI).
"""

import logging

import dagster as dg

from marketflow_assets.defs.common.outcome import Outcome, load_check_settings, utc_now
from marketflow_assets.defs.monitoring.alerts import LOADED_AT
from marketflow_assets.defs.monitoring.checks import CHECK_NAME, SOURCES, asset_freshness
from marketflow_assets.defs.monitoring.history import database_url, record_check_evaluations
from marketflow_assets.defs.raw_prices import checks as raw_checks
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource

log = logging.getLogger(__name__)

EVALUATION_INTERVAL_SECONDS = 60


def evaluate_monitoring_checks(
    postgres: PostgresResource, raw_data: RawDataResource, now=None
) -> list[dg.AssetCheckEvaluation]:
    """Freshness of the three assets + raw quality, as check evaluations (never raises for an
    unreachable store: that is reported as a failed ERROR evaluation naming what to fix)."""
    now = now or utc_now()
    settings = load_check_settings()
    events: list[dg.AssetCheckEvaluation] = []
    for asset in SOURCES:
        try:
            outcome = asset_freshness(
                asset,
                now,
                postgres=postgres,
                raw_dir=raw_data.raw_dir,
                settings=settings,
                loaded_at=LOADED_AT,  # the daemon's code location: loaded when the stack started
            )
        except Exception as exc:  # noqa: BLE001 - unreachable store = failed check
            outcome = _unreachable(asset, postgres, exc)
        events.append(outcome.to_evaluation(asset, CHECK_NAME))
    try:
        raw = raw_checks.evaluate(raw_data.raw_dir)
    except Exception as exc:  # noqa: BLE001 - unreadable dataset = failed checks
        failed = Outcome(False, f"raw_prices unreadable under {raw_data.raw_dir}: {exc}")
        raw = {name: (failed, None) for name in raw_checks.OUTCOMES}
    for name, (outcome, window) in raw.items():
        events.append(outcome.to_evaluation(raw_checks.ASSET, name, window))
    return events


def _unreachable(asset: dg.AssetKey, postgres: PostgresResource, exc: Exception) -> Outcome:
    if asset == raw_checks.ASSET:
        reason = f"raw_prices unreadable: {exc}"
    else:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = (
            f"PostgreSQL ({postgres.display_url()}) unreachable: {first_line}"
            " (check MARKETFLOW_POSTGRES_URL)"
        )
    log.warning("freshness of %s not measurable: %s", asset.to_user_string(), reason)
    return Outcome(False, reason)


@dg.sensor(
    name="monitoring_checks_sensor",
    minimum_interval_seconds=EVALUATION_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every minute: freshness checks of raw_prices, price_indicators and market_movers and"
        " the raw_prices quality checks, recorded as check evaluations (no runs)."
    ),
)
def monitoring_checks_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, raw_data: RawDataResource
) -> dg.SensorResult:
    events = evaluate_monitoring_checks(postgres, raw_data)
    record_check_evaluations(database_url(postgres), events)  # for the dashboard's Pipeline page
    failed = [
        f"{e.asset_key.to_user_string()}:{e.check_name} ({e.severity.value})"
        for e in events
        if not e.passed
    ]
    summary = f"recorded {len(events)} check evaluations; failing: {', '.join(failed) or 'none'}"
    context.log.info(summary)
    # no run to launch: the skip reason is what the UI's tick list shows
    return dg.SensorResult(asset_events=events, skip_reason=dg.SkipReason(summary))
