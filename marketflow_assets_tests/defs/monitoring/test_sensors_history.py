"""The monitoring and alert sensors also record what they see in PostgreSQL (check_results,
alert_history) for the dashboard's Pipeline page; a database that is down does not break them."""

import json

import dagster as dg
import psycopg2
import pytest

from marketflow_assets.defs.monitoring import alerts
from marketflow_assets.defs.monitoring.history import record_alerts, record_check_evaluations
from marketflow_assets.defs.monitoring.sensors import monitoring_checks_sensor

# Ticks in quick succession: no alert cooldown or start-up grace (see defs/conftest.py).
pytestmark = pytest.mark.usefixtures("no_pacing")


def _rows(url: str, statement: str) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall()
    finally:
        conn.close()


def test_sensors_record_checks_and_alerts(
    checks_data, resources, sensor_defs, pg_clean, data_dir, now, monkeypatch
):
    raw = checks_data.make_raw(now)
    checks_data.write_raw(data_dir, raw)
    checks_data.load_good_tables(pg_clean, raw)
    monkeypatch.setenv("MARKETFLOW_POSTGRES_URL", pg_clean)
    instance = dg.DagsterInstance.ephemeral()

    def monitor():
        context = dg.build_sensor_context(
            instance=instance, resources=resources, definitions=sensor_defs
        )
        result = monitoring_checks_sensor(context)
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        return result

    result = monitor()
    recorded = _rows(
        pg_clean, "SELECT check_key, passed, severity, metadata::text FROM check_results"
    )
    assert sorted(r[0] for r in recorded) == sorted(
        f"{e.asset_key.to_user_string()}:{e.check_name}" for e in result.asset_events
    )
    assert all(r[1] and r[2] == "PASSED" for r in recorded)
    raw_fresh = next(r for r in recorded if r[0] == "raw_prices:freshness_check")
    assert json.loads(raw_fresh[3])["newest"] == raw["ts"].max().isoformat()

    context = dg.build_sensor_context(instance=instance, definitions=sensor_defs)
    cursor = alerts.marketflow_alert_sensor(context).cursor
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_WARN_SECONDS", "0.001")
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_ERROR_SECONDS", "0.002")
    monitor()
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=sensor_defs)
    alerts.marketflow_alert_sensor(context)
    sent = _rows(pg_clean, "SELECT alert_key, previous_state, state, message FROM alert_history")
    assert sorted(r[0] for r in sent) == [
        f"{a}:freshness_check" for a in ("market_movers", "price_indicators", "raw_prices")
    ]
    assert all(r[1] == "passed" and r[2] == "ERROR" and "Stale" in r[3] for r in sent)
    failed = _rows(pg_clean, "SELECT count(*) FROM check_results WHERE NOT passed")[0][0]
    assert failed == 3


def test_recording_to_an_unreachable_database_is_logged_not_raised(caplog):
    url = "postgresql://mf:s3cret@127.0.0.1:9/mf"
    evaluation = dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("raw_prices"), check_name="freshness_check", passed=True
    )
    assert record_check_evaluations(url, [evaluation]) == 0
    assert record_alerts(url, []) == 0
    assert "could not record check_results" in caplog.text and "s3cret" not in caplog.text


def test_the_alert_sensor_records_every_check_and_every_failed_run(pg_clean, monkeypatch):
    """Issue 28: the Pipeline page lists the checks that run inside runs (WARN ones too) and
    the failed runs, not only the checks the monitoring sensor evaluates."""
    monkeypatch.setenv("MARKETFLOW_POSTGRES_URL", pg_clean)

    @dg.asset(name="forecast_evaluation")
    def evaluation():
        return 1

    @dg.asset_check(asset=evaluation, name="interval_calibration")
    def calibration():
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, description="coverage 0.55"
        )

    @dg.asset(name="price_indicators")
    def broken():
        raise RuntimeError("raw_prices unreadable\nsecond line")

    defs = dg.Definitions(
        assets=[evaluation, broken],
        asset_checks=[calibration],
        sensors=[alerts.marketflow_alert_sensor],
    )
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([evaluation, calibration], instance=instance).success
    failed = dg.materialize([broken], instance=instance, raise_on_error=False)
    assert not failed.success

    context = dg.build_sensor_context(instance=instance, definitions=defs)
    alerts.marketflow_alert_sensor(context)
    checks = _rows(pg_clean, "SELECT check_key, passed, severity, description FROM check_results")
    assert ("forecast_evaluation:interval_calibration", False, "WARN", "coverage 0.55") in checks
    runs = _rows(pg_clean, "SELECT run_id, job_name, launched_by, error FROM run_failures")
    assert [(r[0], r[2]) for r in runs] == [(failed.run_id, "ui")]
    assert "raw_prices unreadable" in runs[0][3]
    # the next tick records nothing twice
    alerts.marketflow_alert_sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    assert _rows(pg_clean, "SELECT count(*) FROM run_failures")[0][0] == 1
    assert _rows(pg_clean, "SELECT count(*) FROM check_results")[0][0] == 1
