"""Forecast automation: forecasts follow indicators; retraining when live error degrades."""

from __future__ import annotations

import contextlib

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from marketflow_assets.definitions import build_resources
from marketflow_assets.defs.forecasts.assets import _upsert, artifact_path, save_artifact
from marketflow_assets.defs.forecasts.sensors import (
    forecast_retrain_on_degradation,
    forecasts_follow_indicators,
)
from marketflow_assets.forecasting import live
from marketflow_assets.forecasting.serve import train_artifact
from marketflow_assets.resources import RawDataResource
from marketflow_assets_tests.forecasting import synthetic

# Ticks in quick succession: no alert cooldown or start-up grace (see defs/conftest.py).
pytestmark = pytest.mark.usefixtures("no_pacing")


def follow(instance, data_dir, postgres, cursor=None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"postgres": postgres, "raw_data": RawDataResource(data_dir=str(data_dir))},
    )
    return forecasts_follow_indicators(context)


def _indicators(postgres, minutes: float) -> None:
    """``minutes`` of 30-s polls of 3 coins in ``price_indicators`` (replacing what was there)."""
    raw = synthetic.raw_rows("random_walk", coins=3, hours=minutes / 60, seed=2)
    rows = synthetic.panel(raw).drop(columns=["last_updated"])
    start = rows["ts"].min() - pd.Timedelta(days=1)
    postgres.replace_period(
        "price_indicators", rows, start, rows["ts"].max() + pd.Timedelta(1, "s")
    )


def test_forecasts_follow_new_indicators_after_the_warm_up(pg_clean, data_dir):
    postgres = build_resources(pg_clean, str(data_dir))["postgres"]
    postgres.ensure_tables()
    instance = dg.DagsterInstance.ephemeral()
    assert isinstance(follow(instance, data_dir, postgres), dg.SkipReason)
    # ten minutes of prices: no model can be trained on that; nothing is launched
    _indicators(postgres, 10)
    instance.report_runless_asset_event(dg.AssetMaterialization("price_indicators"))
    warming = follow(instance, data_dir, postgres)
    assert not warming.run_requests
    message = warming.skip_reason.skip_message
    assert message.startswith("warming up: ") and " of 60 forecast origins, about " in message
    # forty minutes: the first training
    _indicators(postgres, 40)
    instance.report_runless_asset_event(dg.AssetMaterialization("price_indicators"))
    first = follow(instance, data_dir, postgres, warming.cursor)
    (request,) = first.run_requests
    assert request.job_name == "forecast_training_job"  # no model stored yet: train first
    assert request.tags["marketflow/retrain_reason"].startswith("first training: enough history")
    assert isinstance(follow(instance, data_dir, postgres, first.cursor), dg.SkipReason)

    path = artifact_path(str(data_dir), 300)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"model")
    instance.report_runless_asset_event(dg.AssetMaterialization("price_indicators"))
    second = follow(instance, data_dir, postgres, first.cursor)
    (request,) = second.run_requests
    assert request.job_name == "price_forecasts_job"  # cheap path: predict only
    assert request.run_key != first.run_requests[0].run_key


def test_live_error_by_hand():
    scored = pd.DataFrame(
        {
            "origin_ts": [1, 1, 2, 3],
            "predicted_price": [101.0, 50.0, 10.0, 7.0],
            "lower_80": [99.0, 49.0, 9.0, 6.0],
            "upper_80": [103.0, 51.0, 11.0, 8.0],
            "origin_price": [100.0, 50.0, 10.0, 8.0],
            "realized_price": [102.0, 50.5, 10.0, np.nan],  # last target not yet observed
        }
    )
    out = live.live_error(scored)
    # |102-101|/100 = 1 %, |50.5-50|/50 = 1 %, 0 -> MAE 2/3 %; naive: 2 %, 1 %, 0 -> 1 %
    assert out["n"] == 3 and out["origins"] == 2
    assert out["mae"] == pytest.approx(2 / 3) and out["naive_mae"] == pytest.approx(1.0)
    assert out["mase"] == pytest.approx(2 / 3) and out["coverage_80"] == pytest.approx(1.0)
    many = {**out, "n": 500, "origins": 100}
    assert live.degraded(many, backtest_mae=0.6, learned=True) is None
    assert "MAE" in live.degraded(many, backtest_mae=0.4, learned=False)
    assert "MASE" in live.degraded({**many, "mase": 1.1}, backtest_mae=0.6, learned=True)
    assert live.degraded(out, backtest_mae=0.01, learned=True) is None  # too few forecasts
    narrow = {**many, "coverage_80": 0.4}  # the interval held 40 % instead of 80 %
    assert "coverage" in live.degraded(narrow, backtest_mae=0.6, learned=True)


def test_degradation_sensor_retrains_once_per_model(pg_clean, data_dir):
    resources = build_resources(pg_clean, str(data_dir))
    postgres = resources["postgres"]
    postgres.ensure_tables()
    raw = synthetic.raw_rows("random_walk", coins=5, hours=1.5, seed=3)
    rows = synthetic.panel(raw).drop(columns=["last_updated"])
    postgres.replace_period(
        "price_indicators", rows, rows["ts"].min(), rows["ts"].max() + pd.Timedelta(seconds=1)
    )
    trained_until = rows["ts"].min() + pd.Timedelta(minutes=20)
    artifact = train_artifact(rows, "naive_last_price", 300, 3600, -1.0, 1.0, trained_until)
    artifact.trained_until = trained_until
    save_artifact(artifact, artifact_path(str(data_dir), 300))
    evaluation = pd.DataFrame(
        {"evaluated_at": [trained_until], "model": ["naive_last_price"], "horizon_s": [300],
         "n": [1000], "mae": [0.001], "mase": [1.0], "directional_accuracy": [0.0],
         "coverage_80": [0.8], "promoted": [True], "learned": [False], "dm_stat": [None],
         "dm_pvalue": [None], "q_lower": [-1.0], "q_upper": [1.0], "reason": ["naive serves"]}
    )  # fmt: skip
    _upsert(postgres, "forecast_evaluation", evaluation, {"evaluated_at": trained_until})
    served = rows[rows["ts"] >= trained_until].rename(columns={"ts": "origin_ts"})
    forecasts = pd.DataFrame(
        {"coin_id": served["coin_id"], "origin_ts": served["origin_ts"], "horizon_s": 300,
         "target_ts": served["origin_ts"] + pd.Timedelta(seconds=300),
         "predicted_price": served["price"], "lower_80": served["price"] * 0.99,
         "upper_80": served["price"] * 1.01, "model": "naive_last_price"}
    )  # fmt: skip
    _upsert(postgres, "price_forecasts", forecasts, {"horizon_s": 300})

    def tick(instance):
        context = dg.build_sensor_context(
            instance=instance,
            resources={"postgres": postgres, "raw_data": resources["raw_data"]},
        )
        return forecast_retrain_on_degradation(context)

    instance = dg.DagsterInstance.ephemeral()
    # the backtest claimed MAE 0.001 %; the live random walk is far worse -> retrain
    request = tick(instance)
    assert isinstance(request, dg.RunRequest), request
    assert request.run_key.startswith("degraded-naive_last_price-")
    assert "live MAE" in request.tags["marketflow/retrain_reason"]

    evaluation["mae"] = 10.0  # an honest backtest MAE: live error is fine
    _upsert(postgres, "forecast_evaluation", evaluation, {"evaluated_at": trained_until})
    assert isinstance(tick(instance), dg.SkipReason)


def test_new_snapshot_gets_forecasts_through_sensor_and_job(pg_clean, data_dir, monkeypatch):
    """Train once, then a new indicator snapshot arrives: the sensor requests
    ``price_forecasts_job`` and that job (from the code location) forecasts the new snapshot."""
    from marketflow_assets.definitions import defs
    from marketflow_assets.defs.forecasts.assets import FORECAST_ASSETS
    from marketflow_assets_tests.helpers import read_table

    monkeypatch.setenv("MARKETFLOW_POSTGRES_URL", pg_clean)
    monkeypatch.setenv("MARKETFLOW_DATA_DIR", str(data_dir))
    resources = build_resources(pg_clean, str(data_dir))
    raw = synthetic.raw_rows("random_walk", coins=5, hours=1.0, seed=8)
    synthetic.write_raw(data_dir / "raw_prices", raw)
    rows = synthetic.panel(raw).drop(columns=["last_updated"])
    newest = rows["ts"].max()
    old, new = rows[rows["ts"] < newest], rows[rows["ts"] == newest]
    postgres = resources["postgres"]
    postgres.ensure_tables()
    postgres.replace_period("price_indicators", old, old["ts"].min(), newest)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(FORECAST_ASSETS, resources=resources, instance=instance).success
    before = read_table(pg_clean, "price_forecasts")
    assert set(pd.to_datetime(before["origin_ts"], utc=True)) == {old["ts"].max()}

    postgres.replace_period("price_indicators", new, newest, newest + pd.Timedelta(seconds=1))
    instance.report_runless_asset_event(dg.AssetMaterialization("price_indicators"))
    result = follow(instance, data_dir, postgres)
    (request,) = result.run_requests
    assert request.job_name == "price_forecasts_job"
    job = defs.resolve_job_def(request.job_name)
    assert job.execute_in_process(instance=instance).success
    after = read_table(pg_clean, "price_forecasts")
    latest = after[pd.to_datetime(after["origin_ts"], utc=True) == newest]
    assert sorted(latest["coin_id"]) == sorted(new["coin_id"])
    assert len(after) == len(before) + len(new)  # earlier origins kept


def test_hourly_retraining_waits_for_data(pg_clean, data_dir):
    from marketflow_assets.defs.forecasts.schedules import forecast_retrain_schedule

    postgres = build_resources(pg_clean, str(data_dir))["postgres"]

    def tick():
        # not instance_for_test(): its exit leaves Dagster's defs-state storage pointing at the
        # disposed instance, which breaks later Definitions loads in this process
        with contextlib.nullcontext(dg.DagsterInstance.local_temp(str(data_dir))) as instance:
            context = dg.build_schedule_context(
                instance=instance,
                scheduled_execution_time=pd.Timestamp("2024-05-01T03:07Z").to_pydatetime(),
                resources={"postgres": postgres},
            )
            return forecast_retrain_schedule(context)

    assert isinstance(tick(), dg.SkipReason)  # no indicators yet
    for hours, trains in ((0.1, False), (0.7, True)):  # 6 minutes warm up; 42 are enough
        rows = synthetic.panel(synthetic.raw_rows("random_walk", coins=2, hours=hours, seed=1))
        rows = rows.drop(columns=["last_updated"])
        postgres.replace_period(
            "price_indicators", rows, rows["ts"].min(), rows["ts"].max() + pd.Timedelta(seconds=1)
        )
        if not trains:
            assert tick().skip_message.startswith("warming up: ")
    request = tick()
    assert isinstance(request, dg.RunRequest) and request.run_key.startswith("retrain-")
