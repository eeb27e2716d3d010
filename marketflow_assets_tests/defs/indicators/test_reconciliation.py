"""Reconciliation (issue #20, part 3): a late row in an hour 5 days old - far outside the 2-day
window the observation sensor watches - reaches ``price_indicators`` by itself.

Real raw Parquet, real PostgreSQL (pgserver), a real Dagster instance: the
``price_indicators_reconciled`` check fails naming the hour, ``reconciliation_sensor`` requests
the partitions from that hour to the newest one (the EMA of the later rows changes too), the
requested run is executed, and then the check passes and every row equals an independent full
recompute (1e-9).
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from marketflow_assets import definitions, reconcile
from marketflow_assets.definitions import ASSET_CHECKS
from marketflow_assets.defs.common.partitions import HOURLY
from marketflow_assets.defs.indicators.jobs import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    partition_key_for,
    partition_range_tags,
)
from marketflow_assets.defs.indicators.reconciliation_checks import (
    CHECK_KEY,
    price_indicators_reconciled,
)
from marketflow_assets.defs.indicators.reconciliation_sensor import reconciliation_sensor
from marketflow_assets_tests.helpers import (
    assert_indicators_match_reference,
    read_table,
    write_raw_parquet,
)

COINS = ("alpha", "beta", "gamma")


def polls(start: datetime, count: int, seed: int = 4) -> list[tuple]:
    rng = random.Random(seed)
    prices = {coin: 100.0 * (i + 1) for i, coin in enumerate(COINS)}
    rows = []
    for k in range(count):
        ts = start + timedelta(seconds=30 * k)
        for coin in COINS:
            prices[coin] *= math.exp(rng.gauss(0, 0.002))
            rows.append((coin, coin[:3], ts, prices[coin]))
    return rows


@pytest.fixture
def defs(pg_clean, data_dir) -> dg.Definitions:
    assert price_indicators_reconciled in ASSET_CHECKS  # so every Definitions of JOBS has it
    return dg.Definitions(
        assets=definitions.ASSETS,
        asset_checks=definitions.ASSET_CHECKS,
        jobs=[
            *definitions.JOBS,
            dg.define_asset_job(
                "reconciled_check_job", selection=dg.AssetSelection.checks(CHECK_KEY)
            ),
        ],
        sensors=[reconciliation_sensor],
        resources=definitions.build_resources(pg_clean, str(data_dir)),
    )


def run_check(defs, instance) -> dg.AssetCheckEvaluation:
    result = defs.resolve_job_def("reconciled_check_job").execute_in_process(instance=instance)
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def tick(defs, instance, cursor=None):
    resources = {key: defs.resources[key] for key in ("postgres", "raw_data")}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return reconciliation_sensor(context)


def ema_at(url: str, coin: str, ts: datetime) -> float:
    table = read_table(url, "price_indicators")
    row = table[(table.coin_id == coin) & (table.ts == ts)]
    return float(row.ema_3min.iloc[0])


def test_late_row_five_days_old_is_reconciled_by_the_sensor(
    defs, pg_clean, data_dir, spark, monkeypatch
):
    raw_dir = data_dir / "raw_prices"
    hour = (datetime.now(UTC) - timedelta(days=5)).replace(minute=0, second=0, microsecond=0)
    rows = polls(hour - timedelta(minutes=10), 160)  # hour - 10 min .. hour + 1 h + 10 min
    write_raw_parquet(raw_dir, rows)
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("refresh_indicators_job")
    first, last = hour - timedelta(hours=1), hour + timedelta(hours=1)
    tags = partition_range_tags(partition_key_for(first), partition_key_for(last))
    assert job.execute_in_process(instance=instance, tags=tags).success
    assert run_check(defs, instance).passed

    result = tick(defs, instance)
    assert not result.run_requests and "agree" in result.skip_reason.skip_message
    cursor = result.cursor
    assert json.loads(cursor)["days"]  # the verified days are remembered
    # the interval (MARKETFLOW_RECONCILE_INTERVAL_SECONDS, default 300 s) is respected
    again = tick(defs, instance, cursor)
    assert isinstance(again, dg.SkipReason) and "MARKETFLOW_RECONCILE_INTERVAL" in str(
        again.skip_message
    )

    # a late observation lands in the old day, 15 s before the next hour starts
    late_ts = hour + timedelta(minutes=59, seconds=45)
    late = ("alpha", "alp", late_ts, 50.0)
    write_raw_parquet(raw_dir, [late], name="late-00001.parquet")
    next_hour = hour + timedelta(hours=1)
    ema_before = ema_at(pg_clean, "alpha", next_hour)

    evaluation = run_check(defs, instance)
    assert not evaluation.passed
    assert f"{hour:%Y-%m-%d %H:00}" in evaluation.description
    assert evaluation.metadata["differing_hours"].value == 1
    assert f"{hour:%Y-%m-%d %H:00} UTC: raw 361, indicators 360" in (
        evaluation.metadata["hours"].value
    )

    monkeypatch.setenv("MARKETFLOW_RECONCILE_INTERVAL_SECONDS", "0.001")
    result = tick(defs, instance, cursor)
    (request,) = result.run_requests
    newest = HOURLY.get_last_partition_window().start
    assert request.tags[RANGE_START_TAG] == partition_key_for(hour)
    assert request.tags[RANGE_END_TAG] == partition_key_for(newest)  # later hours: EMA
    assert request.tags["marketflow/trigger"] == "reconciliation"

    run = job.execute_in_process(instance=instance, tags=request.tags)
    assert run.success
    assert run_check(defs, instance).passed
    # the hour after the late row changed too (its EMA continues from the late row) ...
    assert ema_at(pg_clean, "alpha", next_hour) != ema_before
    # ... and every row equals a full recompute of all raw rows
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), [*rows, late])

    result = tick(defs, instance, result.cursor)
    assert not result.run_requests and "agree" in result.skip_reason.skip_message


def test_hours_in_flight_are_left_to_their_run(defs, pg_clean, data_dir, monkeypatch):
    raw_dir = data_dir / "raw_prices"
    hour = (datetime.now(UTC) - timedelta(days=5)).replace(minute=0, second=0, microsecond=0)
    write_raw_parquet(raw_dir, polls(hour, 20))  # never materialized: every row differs
    instance = dg.DagsterInstance.ephemeral()
    monkeypatch.setenv("MARKETFLOW_RECONCILE_INTERVAL_SECONDS", "0.001")
    job = defs.resolve_job_def("refresh_indicators_job")
    instance.create_run_for_job(
        job,
        tags={"dagster/partition": partition_key_for(hour)},
        status=dg.DagsterRunStatus.STARTED,
    )
    result = tick(defs, instance)
    assert not result.run_requests
    assert "left to run" in result.skip_reason.skip_message
    assert json.loads(result.cursor)["days"] == {}  # the day is compared again next time

    with reconcile_conn(pg_clean) as conn:
        stored = reconcile.indicator_rows_per_hour(conn)
    assert reconcile.differing_hours(reconcile.raw_rows_per_hour(raw_dir), stored) == [
        reconcile.HourDiff(hour, 60, 0)
    ]


def reconcile_conn(url):
    import contextlib

    import psycopg2

    @contextlib.contextmanager
    def connect():
        conn = psycopg2.connect(url)
        try:
            yield conn
        finally:
            conn.close()

    return connect()
