"""``stream_health_sensor``: stream lag, dead-letter rate and reject rate every 20 s, from outside.

It records run-less evaluations of the ``raw_prices`` checks ``stream_lag``, ``dead_letter_rate``
and ``reject_rate`` (:mod:`marketflow_assets.defs.monitoring.stream_checks`) whose numeric metadata
(lag seconds
and records, rates) the UI plots over time. It reads only the streaming job's checkpoint and the
broker, so a job that is stopped (SIGSTOP) or hung turns ``stream_lag`` red even though its own
``/metrics`` endpoint no longer answers. ``marketflow_alert_sensor`` turns state changes into
alerts.

The dead-letter rate is windowed: the cursor keeps (time, records in the price topic, records in
the dead-letter topic) snapshots of the last ``MARKETFLOW_RATE_WINDOW_SECONDS``; the rate is the
growth of the DLQ over the growth of both since the oldest snapshot.
"""

from __future__ import annotations

import json
import time

import dagster as dg

from marketflow_assets.defs.common.outcome import Outcome
from marketflow_assets.defs.monitoring import stream_checks as stream
from marketflow_assets.defs.monitoring.history import database_url, record_check_evaluations
from marketflow_assets.resources.kafka import KafkaTopicResource
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.settings import MonitoringSettings, load_monitoring_settings

EVALUATION_INTERVAL_SECONDS = 20


def windowed_dead_letters(
    history: list[list[float]], now: float, published: int, dead: int, window_s: float
) -> tuple[int, int, list[list[float]]]:
    """(Δpublished, Δdead) since the oldest snapshot in the window, and the new history.

    A count that went down (the memory-only broker restarted) starts the history afresh."""
    kept = [h for h in history if h[0] >= now - window_s and h[1] <= published and h[2] <= dead]
    base = kept[0] if kept else [now, published, dead]
    kept.append([now, published, dead])
    return published - int(base[1]), dead - int(base[2]), kept


def evaluate_stream_checks(
    kafka: KafkaTopicResource,
    settings: MonitoringSettings,
    history: list[list[float]],
    now: float | None = None,
) -> tuple[list[dg.AssetCheckEvaluation], list[list[float]]]:
    """The three stream check evaluations and the new dead-letter history."""
    now = time.time() if now is None else now
    lag = stream.measure_lag_outcome(kafka, settings, now)
    window = f"the last {settings.rate_window_seconds:g} s"
    try:
        published, dead = stream.topic_counts(kafka)
        d_pub, d_dead, history = windowed_dead_letters(
            history, now, published, dead, settings.rate_window_seconds
        )
        dlq = stream.dead_letter_outcome(d_pub, d_dead, settings, window)
    except Exception as exc:  # noqa: BLE001 - the lag check already says the broker is down
        dlq = Outcome(True, f"Dead-letter rate not measurable: {type(exc).__name__}.")
    rejects = stream.reject_outcome(kafka, settings, now)
    events = [
        lag.to_evaluation(stream.RAW, stream.LAG_CHECK),
        dlq.to_evaluation(stream.RAW, stream.DLQ_CHECK),
        rejects.to_evaluation(stream.RAW, stream.REJECT_CHECK),
    ]
    return events, history


@dg.sensor(
    name="stream_health_sensor",
    minimum_interval_seconds=EVALUATION_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 20 s: stream lag (from the Spark job's checkpoint vs the broker), dead-letter rate"
        " and reject rate, recorded as raw_prices check evaluations (no runs)."
    ),
)
def stream_health_sensor(
    context: dg.SensorEvaluationContext, kafka: KafkaTopicResource, postgres: PostgresResource
) -> dg.SensorResult:
    history = json.loads(context.cursor)["dlq_history"] if context.cursor else []
    events, history = evaluate_stream_checks(kafka, load_monitoring_settings(), history)
    record_check_evaluations(database_url(postgres), events)  # for the dashboard's Pipeline page
    summary = "; ".join(
        f"{e.check_name}: {'ok' if e.passed else e.severity.value} — {e.description}"
        for e in events
    )
    context.log.info(summary)
    return dg.SensorResult(
        asset_events=events,
        cursor=json.dumps({"dlq_history": history}),
        skip_reason=dg.SkipReason(summary),
    )
