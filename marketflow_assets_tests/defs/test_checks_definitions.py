"""The checks as the code location serves them: loaded from marketflow_assets.definitions, with
resources from the environment (as `dagster dev` / `marketflow up` run them)."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg2
import pytest

from marketflow_assets_tests.defs.checks_data import load_good_tables, make_raw, write_raw

ASSETS = ("raw_prices", "price_indicators", "market_movers")


@pytest.fixture
def defs(pg_clean, data_dir, monkeypatch):
    monkeypatch.setenv("MARKETFLOW_POSTGRES_URL", pg_clean)
    monkeypatch.setenv("MARKETFLOW_DATA_DIR", str(data_dir))
    from marketflow_assets.definitions import defs

    return defs


def _evaluations(defs, job_name):
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    return {e.asset_check_key.to_user_string(): e for e in result.get_asset_check_evaluations()}


def test_definitions_hold_checks_and_sensors(defs):
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.asset_check_keys}
    assert {f"{a}:freshness_check" for a in ASSETS} <= keys
    for table in ("price_indicators", "market_movers"):
        assert len([k for k in keys if k.startswith(f"{table}:") and "freshness" not in k]) >= 2
    sensors = {s.name for s in repo.sensor_defs}
    assert {"marketflow_alert_sensor", "monitoring_checks_sensor"} <= sensors
    for name in ("marketflow_alert_sensor", "monitoring_checks_sensor"):
        assert repo.get_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_job_def("monitoring_checks_job")
    assert defs.resolve_job_def("all_checks_job")


def test_all_checks_job_green_on_good_data_red_on_stale_and_corrupt(defs, pg_clean, data_dir):
    now = datetime.now(UTC).replace(microsecond=0)
    raw = make_raw(now, coins=12)
    write_raw(data_dir, raw)
    load_good_tables(pg_clean, raw)
    evaluations = _evaluations(defs, "all_checks_job")
    ours = {k: e for k, e in evaluations.items() if k.split(":")[0] in ASSETS}
    assert len(ours) >= 12
    assert {k: e.description for k, e in ours.items() if not e.passed} == {}

    # corrupt + stale: indicators stop 6 minutes ago, with a negative price and a bad SMA
    cut, bad_price, bad_sma = (now - timedelta(minutes=m) for m in (6, 8, 9))
    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM price_indicators WHERE ts > %s", (cut,))
        cur.execute("DELETE FROM market_movers WHERE snapshot_ts > %s", (cut,))
        cur.execute("UPDATE price_indicators SET price = -1 WHERE ts = %s", (bad_price,))
        cur.execute("UPDATE price_indicators SET sma_5min = sma_5min * 3 WHERE ts = %s", (bad_sma,))
    conn.close()
    evaluations = _evaluations(defs, "all_checks_job")
    failing = {k for k, e in evaluations.items() if not e.passed}
    assert {
        "price_indicators:freshness_check",
        "market_movers:freshness_check",
        "price_indicators:prices_positive",
        "price_indicators:sma_within_window_range",
    } <= failing
    assert "raw_prices:freshness_check" not in failing
