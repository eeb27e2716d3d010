"""Forecast automation: forecasts follow new indicators; retraining when live error degrades.

* ``forecasts_follow_indicators`` (every 10 s): when ``price_indicators`` has new
  materializations since its cursor, launches ``price_forecasts_job`` (cheap: the stored model
  forecasts the newest snapshot), or ``forecast_training_job`` when no model is stored yet and
  the history is long enough for a first training (before that it says "warming up: n of m
  forecast origins", :mod:`marketflow_assets.forecasting.warmup`). It waits while a forecast run
  is in flight (the next run then covers the newest snapshot).
* ``forecast_retrain_on_degradation`` (every 5 min): scores the forecasts the stored model served
  whose target time has passed (:mod:`marketflow_assets.forecasting.live`) and launches
  ``forecast_training_job`` once per stored model when its live error degraded.

Hourly retraining is ``defs/forecasts/schedules.py``.
"""

import dagster as dg

from marketflow_assets.defs.common.cursors import materializations_since_cursor, storage_id_cursor
from marketflow_assets.defs.common.runs import in_flight_runs
from marketflow_assets.defs.forecasts.assets import (
    PRICE_INDICATORS_KEY,
    artifact_path,
    forecast_warm_up,
    latest_evaluation,
    load_artifact,
    served_outcomes,
)
from marketflow_assets.defs.forecasts.jobs import forecast_training_job, price_forecasts_job
from marketflow_assets.forecasting import live
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource

DEFAULT_HORIZON_S = 300


def forecast_run_in_flight(instance: dg.DagsterInstance) -> str | None:
    """Id of a queued or running forecast run, if any."""
    for job in (forecast_training_job.name, price_forecasts_job.name):
        runs = in_flight_runs(instance, job, limit=1)
        if runs:
            return runs[0].dagster_run.run_id
    return None


@dg.sensor(
    name="forecasts_follow_indicators",
    description="Forecasts the newest snapshot after each price_indicators materialization "
    "(trains first when no model is stored).",
    jobs=[price_forecasts_job, forecast_training_job],
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def forecasts_follow_indicators(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, raw_data: RawDataResource
) -> dg.SensorResult | dg.SkipReason:
    records = materializations_since_cursor(context, PRICE_INDICATORS_KEY)
    if not records:
        return dg.SkipReason("no new price_indicators materialization")
    busy = forecast_run_in_flight(context.instance)
    if busy is not None:
        return dg.SkipReason(f"forecast run {busy} in flight; the newest snapshot follows it")
    storage_id = records[-1].storage_id
    cursor = storage_id_cursor(records[-1])
    if artifact_path(raw_data.root, DEFAULT_HORIZON_S).is_file():
        request = dg.RunRequest(run_key=f"forecast-{storage_id}", job_name=price_forecasts_job.name)
    else:
        warm = forecast_warm_up(postgres, DEFAULT_HORIZON_S)
        if not warm.ready:  # no model, no forecast: nothing is served before it can be trained
            return dg.SensorResult(skip_reason=warm.message(), cursor=cursor)
        request = dg.RunRequest(
            run_key=f"first-training-{storage_id}",
            job_name=forecast_training_job.name,
            tags={"marketflow/retrain_reason": f"first training: {warm.message()}"[:200]},
        )
    return dg.SensorResult(run_requests=[request], cursor=cursor)


@dg.sensor(
    name="forecast_retrain_on_degradation",
    description="Retrains the forecast model when its live error degrades (live MASE >= 1 for a "
    "learned model, or live MAE > 1.5 x its backtest MAE).",
    job=forecast_training_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def forecast_retrain_on_degradation(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, raw_data: RawDataResource
) -> dg.RunRequest | dg.SkipReason:
    artifact = load_artifact(artifact_path(raw_data.root, DEFAULT_HORIZON_S))
    if artifact is None or artifact.trained_until is None:
        return dg.SkipReason("no forecast model stored yet")
    scored = served_outcomes(postgres, artifact.model, artifact.horizon_s, artifact.trained_until)
    error = live.live_error(scored)
    evaluation = latest_evaluation(postgres, artifact.horizon_s)
    row = evaluation[evaluation["model"] == artifact.model]
    backtest_mae = float(row["mae"].iloc[0]) if len(row) and row["mae"].notna().all() else 0.0
    reason = live.degraded(error, backtest_mae, artifact.candidate.learned)
    if reason is None:
        return dg.SkipReason(
            f"{artifact.model}: live error fine ({error['n']} scored forecasts, "
            f"MAE {error['mae']:.4g}%, MASE {error['mase']:.3g})"
        )
    busy = forecast_run_in_flight(context.instance)
    if busy is not None:
        return dg.SkipReason(f"degraded ({reason}) but forecast run {busy} is in flight")
    context.log.info(f"retraining {artifact.model}: {reason}")
    return dg.RunRequest(
        run_key=f"degraded-{artifact.model}-{artifact.trained_until.isoformat()}",
        tags={"marketflow/retrain_reason": reason[:200]},
    )
