"""Hourly retraining of the forecast model.

Every hour (minute 7) one run of ``forecast_training_job`` backtests every candidate on the newest
data, applies the promotion gate, fits the promoted model and forecasts the newest snapshot.
Skipped while a forecast run is still in flight, while ``price_indicators`` is empty, and during
the warm-up (no model yet and too little history: the sensor trains the first one).
"""

import dagster as dg

from marketflow_assets.defs.forecasts.assets import forecast_warm_up, newest_indicator_ts
from marketflow_assets.defs.forecasts.jobs import forecast_training_job
from marketflow_assets.defs.forecasts.sensors import DEFAULT_HORIZON_S, forecast_run_in_flight
from marketflow_assets.resources.postgres import PostgresResource


@dg.schedule(
    name="forecast_retrain_schedule",
    cron_schedule="7 * * * *",
    execution_timezone="UTC",
    job=forecast_training_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly: backtest, gate and refit the forecast model, then forecast.",
)
def forecast_retrain_schedule(context: dg.ScheduleEvaluationContext, postgres: PostgresResource):
    if newest_indicator_ts(postgres) is None:
        return dg.SkipReason("price_indicators is empty: nothing to train on yet")
    warm = forecast_warm_up(postgres, DEFAULT_HORIZON_S)
    if not warm.ready:
        return dg.SkipReason(warm.message())
    busy = forecast_run_in_flight(context.instance)
    if busy is not None:
        return dg.SkipReason(f"forecast run {busy} is still in flight")
    return dg.RunRequest(run_key=f"retrain-{context.scheduled_execution_time.isoformat()}")
