"""Sensors and schedule: real files, a real Dagster instance, and the runs they request executed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd

from marketflow_assets.defs.indicators.jobs import RANGE_END_TAG, RANGE_START_TAG
from marketflow_assets.defs.indicators.schedules import recent_indicators_schedule
from marketflow_assets.defs.indicators.sensors import indicators_follow_raw_prices
from marketflow_assets.defs.raw_prices.assets import RAW_PRICES_KEY
from marketflow_assets.defs.raw_prices.sensors import raw_prices_observation_sensor
from marketflow_assets.resources import RawDataResource
from marketflow_assets_tests.helpers import (
    irregular_rows,
    read_table,
    reference_indicators,
    write_raw_parquet,
)


def observe(instance, data_dir, cursor=None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"raw_data": RawDataResource(data_dir=str(data_dir))},
    )
    return raw_prices_observation_sensor(context)


def micros(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def test_observation_sensor_reports_new_files_once(data_dir):
    instance = dg.DagsterInstance.ephemeral()
    assert isinstance(observe(instance, data_dir), dg.SkipReason)  # no dataset yet

    rows = irregular_rows(seed=2, coins=3, polls=20)
    write_raw_parquet(data_dir / "raw_prices", rows)
    result = observe(instance, data_dir)
    assert isinstance(result, dg.SensorResult)
    (event,) = result.asset_events
    assert event.asset_key == RAW_PRICES_KEY
    meta = event.metadata
    assert meta["new_rows"].value == len(rows)
    assert meta["new_files"].value == len({r[2].date() for r in rows})
    newest = max(r[2] for r in rows)
    assert meta["newest_ts"].value == newest.timestamp()
    assert meta["oldest_new_ts"].value == min(r[2] for r in rows).timestamp()
    assert meta["lag_seconds"].value > 0

    again = observe(instance, data_dir, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason)

    # a file named like the streaming job's output: its time range comes from the name
    later = [(c, s, t + timedelta(hours=1), p) for c, s, t, p in rows[-5:]]
    lo, hi = min(r[2] for r in later), max(r[2] for r in later)
    name = f"part-00ab-b42-000-{micros(lo)}-{micros(hi)}.parquet"
    paths = write_raw_parquet(data_dir / "raw_prices", later, name=name)
    third = observe(instance, data_dir, cursor=result.cursor)
    (event,) = third.asset_events
    assert event.metadata["new_files"].value == len(paths)
    assert event.metadata["new_rows"].value == 5
    assert event.metadata["newest_ts"].value == hi.timestamp()


def test_new_raw_data_leads_to_indicator_rows(data_dir, pg_clean, spark):
    """observation sensor -> automation sensor -> requested run -> rows in Postgres."""
    instance = dg.DagsterInstance.ephemeral()
    rows = irregular_rows(seed=5, coins=4, polls=40)
    write_raw_parquet(data_dir / "raw_prices", rows)
    observed = observe(instance, data_dir)
    for event in observed.asset_events:
        instance.report_runless_asset_event(event)

    result = indicators_follow_raw_prices(dg.build_sensor_context(instance=instance))
    (request,) = result.run_requests
    first = min(r[2] for r in rows).replace(minute=0, second=0, microsecond=0)
    last = max(r[2] for r in rows).replace(minute=0, second=0, microsecond=0)
    assert request.tags[RANGE_START_TAG] == first.strftime("%Y-%m-%d-%H:%M")
    assert request.tags[RANGE_END_TAG] == last.strftime("%Y-%m-%d-%H:%M")
    assert json.loads(result.cursor)["storage_id"] > 0
    # the cursor moved: nothing new, nothing requested
    again = indicators_follow_raw_prices(
        dg.build_sensor_context(instance=instance, cursor=result.cursor)
    )
    assert isinstance(again, dg.SkipReason)

    from marketflow_assets import definitions

    # the job as deployed: assets plus their (non-freshness) quality checks
    defs = dg.Definitions(
        assets=definitions.ASSETS,
        asset_checks=definitions.ASSET_CHECKS,
        jobs=definitions.JOBS,
        resources=definitions.build_resources(pg_clean, str(data_dir)),
    )
    job = defs.resolve_job_def("refresh_indicators_job")
    run = job.execute_in_process(instance=instance, tags=request.tags)
    assert run.success
    table = read_table(pg_clean, "price_indicators")
    ref = reference_indicators(rows)
    assert len(table) == len(ref)
    by_key = table.set_index(["coin_id", "ts"])
    for (coin, ts), exp in list(ref.items())[::7]:
        got = by_key.loc[(coin, pd.Timestamp(ts))]
        assert abs(got["ema_3min"] / exp["ema_3min"] - 1) <= 1e-9


def test_schedule_requests_previous_and_current_hour_when_there_is_data(data_dir):
    def evaluate(when):
        context = dg.build_schedule_context(
            scheduled_execution_time=when,
            resources={"raw_data": RawDataResource(data_dir=str(data_dir))},
        )
        return recent_indicators_schedule(context)

    when = datetime(2024, 3, 10, 0, 15, tzinfo=UTC)
    assert isinstance(evaluate(when), dg.SkipReason)  # nothing to recompute
    write_raw_parquet(data_dir / "raw_prices", irregular_rows(seed=2, coins=2, polls=30))
    request = evaluate(when)
    assert request.tags[RANGE_START_TAG] == "2024-03-09-23:00"
    assert request.tags[RANGE_END_TAG] == "2024-03-10-00:00"
    assert isinstance(evaluate(when + timedelta(days=2)), dg.SkipReason)
