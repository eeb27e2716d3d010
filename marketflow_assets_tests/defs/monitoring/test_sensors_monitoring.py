"""monitoring_checks_sensor: records freshness + raw check results in the instance, no runs."""

from datetime import timedelta

import dagster as dg
import pytest

from marketflow_assets.defs.monitoring.sensors import (
    evaluate_monitoring_checks,
    monitoring_checks_sensor,
)
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource

# Ticks in quick succession: no alert cooldown or start-up grace (see defs/conftest.py).
pytestmark = pytest.mark.usefixtures("no_pacing")

FRESHNESS = ("raw_prices", "price_indicators", "market_movers")


def _tick(instance, resources, defs):
    """One sensor tick, then what the sensor daemon does with its result."""
    context = dg.build_sensor_context(instance=instance, resources=resources, definitions=defs)
    result = monitoring_checks_sensor(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def _latest(instance, asset, check):
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    return instance.get_latest_asset_check_evaluation_record(key).evaluation


def test_sensor_records_green_then_red(
    checks_data, resources, sensor_defs, pg_clean, data_dir, now, monkeypatch
):
    raw = checks_data.make_raw(now)
    checks_data.write_raw(data_dir, raw)
    checks_data.load_good_tables(pg_clean, raw)
    instance = dg.DagsterInstance.ephemeral()

    result = _tick(instance, resources, sensor_defs)
    names = sorted(f"{e.asset_key.to_user_string()}:{e.check_name}" for e in result.asset_events)
    assert names == sorted(
        [f"{a}:freshness_check" for a in FRESHNESS]
        + [
            "raw_prices:prices_positive",
            "raw_prices:unique_id_ts",
            "raw_prices:rows_per_poll_stable",
        ]
    )
    assert all(e.passed for e in result.asset_events)
    assert _latest(instance, "market_movers", "freshness_check").passed
    assert instance.get_runs() == []  # evaluated in the sensor, no run launched

    # the stream stalls: lower the thresholds below the data's age instead of waiting minutes
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_WARN_SECONDS", "0.001")
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_ERROR_SECONDS", "0.002")
    _tick(instance, resources, sensor_defs)
    for asset in FRESHNESS:
        evaluation = _latest(instance, asset, "freshness_check")
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR


def test_bad_raw_data_turns_raw_checks_red(checks_data, data_dir, pg_clean, now):
    raw = checks_data.make_raw(now)
    raw.loc[raw.index[-1], "current_price"] = -5.0
    checks_data.write_raw(data_dir, raw)
    events = evaluate_monitoring_checks(
        PostgresResource(url=pg_clean), RawDataResource(data_dir=str(data_dir)), now=now
    )
    by_name = {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in events}
    assert by_name["raw_prices:freshness_check"].passed
    assert not by_name["raw_prices:prices_positive"].passed
    # the tables do not exist yet: no data is an ERROR for their freshness
    assert not by_name["price_indicators:freshness_check"].passed


def test_unreachable_postgres_is_a_red_check_not_a_crash(data_dir, now):
    postgres = PostgresResource(url="postgresql://marketflow:s3cret@127.0.0.1:9/marketflow")
    events = evaluate_monitoring_checks(
        postgres, RawDataResource(data_dir=str(data_dir)), now=now + timedelta(seconds=1)
    )
    indicators = next(e for e in events if e.asset_key == dg.AssetKey("price_indicators"))
    assert not indicators.passed
    assert "MARKETFLOW_POSTGRES_URL" in indicators.description
    assert "s3cret" not in indicators.description
