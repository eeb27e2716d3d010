"""Stream health checks on ``raw_prices``: ``stream_lag``, ``dead_letter_rate``, ``reject_rate``.

Measured from outside the Spark job (see :mod:`marketflow_assets.monitoring.lag`), so a stalled
job still turns the checks red. Thresholds from ``settings.load_monitoring_settings``:

* ``stream_lag`` — age of the oldest record in ``crypto_prices`` not yet written to Parquet:
  WARN above ``MARKETFLOW_LAG_WARN_SECONDS`` (60), ERROR above ``MARKETFLOW_LAG_ERROR_SECONDS``
  (180); ERROR when the broker cannot be reached;
* ``dead_letter_rate`` — dead letters / all records published in the window: WARN above
  ``MARKETFLOW_DLQ_RATE_WARN`` (0.05), ERROR above ``MARKETFLOW_DLQ_RATE_ERROR`` (0.25);
* ``reject_rate`` — rows the job rejected / rows it read, over its commits in the window: WARN
  above ``MARKETFLOW_REJECT_RATE_WARN`` (0.01), ERROR above ``..._ERROR`` (0.10).

``stream_health_sensor`` records these every 20 s with a windowed dead-letter rate (the window
is ``MARKETFLOW_RATE_WINDOW_SECONDS``); executed on their own (UI, job) the dead-letter rate
covers all records the broker still holds. Failures caused only by missing data (nothing
committed yet) carry ``no_data=True`` in their metadata, and lag while the job still commits
(the backlog of a fresh start) ``catching_up=True``: the alert sensor holds both during the
start-up grace period; a stalled job stops committing and is alerted.
"""

from __future__ import annotations

import time

import dagster as dg

from marketflow_assets.defs.common.outcome import Outcome
from marketflow_assets.monitoring import lag as lagmod
from marketflow_assets.resources.kafka import KafkaTopicResource
from marketflow_assets.settings import MonitoringSettings, load_monitoring_settings

RAW = dg.AssetKey("raw_prices")
LAG_CHECK = "stream_lag"
DLQ_CHECK = "dead_letter_rate"
REJECT_CHECK = "reject_rate"
STREAM_CHECK_KEYS = [dg.AssetCheckKey(RAW, n) for n in (LAG_CHECK, DLQ_CHECK, REJECT_CHECK)]

#: A job that committed within this many seconds is making progress ("catching up"): during the
#: start-up grace its lag (the backlog of a fresh start) is not alerted.
CATCHING_UP_COMMIT_AGE_S = 60.0

WARN = dg.AssetCheckSeverity.WARN
ERROR = dg.AssetCheckSeverity.ERROR


def _classify(value: float, warn: float, error: float) -> dg.AssetCheckSeverity | None:
    if value > error:
        return ERROR
    if value > warn:
        return WARN
    return None


def lag_outcome(report: lagmod.LagReport, settings: MonitoringSettings, now: float) -> Outcome:
    """Classify the age of the oldest unwritten record against the lag thresholds."""
    committed = report.committed
    metadata = {
        "lag_seconds": round(report.seconds, 3),
        "lag_records": report.total,
        "lag_records_by_partition": dg.MetadataValue.json(
            {str(p): n for p, n in report.records.items()}
        ),
        "committed_batch": committed.batch_id if committed.batch_id is not None else -1,
        "last_commit_age_seconds": (
            round(now - committed.committed_at, 3) if committed.committed_at else -1.0
        ),
        "warn_after_seconds": settings.lag_warn_seconds,
        "error_after_seconds": settings.lag_error_seconds,
    }
    severity = _classify(report.seconds, settings.lag_warn_seconds, settings.lag_error_seconds)
    behind = f"{report.total} record(s) behind, oldest unwritten {report.seconds:.0f} s old"
    if committed.batch_id is None and report.total:
        text = f"Stream lag: the streaming job has not committed a batch yet; {behind}."
        return Outcome(
            severity is None, text, {**metadata, "no_data": True}, severity=severity or WARN
        )
    if severity is None:
        return Outcome(
            True, f"Stream lag {report.seconds:.0f} s ({report.total} records).", metadata
        )
    limit = settings.lag_error_seconds if severity == ERROR else settings.lag_warn_seconds
    if 0 <= metadata["last_commit_age_seconds"] < CATCHING_UP_COMMIT_AGE_S:
        metadata["catching_up"] = True  # lagging but committing: a backlog, not a stall
    text = (
        f"Stream lag {report.seconds:.0f} s > {limit:g} s: {behind}; the Spark streaming job is"
        f" stalled or too slow (last commit {metadata['last_commit_age_seconds']:.0f} s ago)."
    )
    return Outcome(False, text, metadata, severity=severity)


def unreachable_outcome(bootstrap: str, exc: Exception) -> Outcome:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Outcome(
        False,
        f"Stream lag unknown: Kafka at {bootstrap or '(unset)'} unreachable ({reason});"
        " check the broker and MARKETFLOW_KAFKA_BOOTSTRAP.",
        {"lag_seconds": -1.0},
    )


def rate_outcome(
    name: str,
    value: float | None,
    part: int,
    total: int,
    warn: float,
    error: float,
    window: str,
) -> Outcome:
    """``name`` rate = ``part`` / ``total`` against its thresholds; passes when ``total`` is 0."""
    metadata = {
        f"{name.replace(' ', '_')}_rate": round(value or 0.0, 6),
        name.replace(" ", "_") + "s": part,
        "records": total,
        "warn_above": warn,
        "error_above": error,
        "window": window,
    }
    if value is None:
        return Outcome(True, f"No records in {window}; {name} rate not defined.", metadata)
    severity = _classify(value, warn, error)
    text = f"{name.capitalize()} rate {value:.2%} ({part} of {total}) over {window}"
    if severity is None:
        return Outcome(True, text + ".", metadata)
    limit = error if severity == ERROR else warn
    return Outcome(False, f"{text} > {limit:.2%}.", metadata, severity=severity)


def reject_outcome(kafka: KafkaTopicResource, settings: MonitoringSettings, now: float) -> Outcome:
    checkpoint = lagmod.stream_checkpoint(kafka.checkpoint_root, kafka.topic_name)
    since = now - settings.rate_window_seconds
    value, rejects, rows_in = lagmod.reject_rate(lagmod.sink_commits(checkpoint), since)
    window = f"the streaming job's batches of the last {settings.rate_window_seconds:g} s"
    return rate_outcome(
        "reject",
        value,
        rejects,
        rows_in,
        settings.reject_rate_warn,
        settings.reject_rate_error,
        window,
    )


def no_broker_outcome(measure: str) -> Outcome:
    """No Kafka is configured (a plain ``dagster dev`` beside no broker): nothing to measure, so
    nothing to fail; ``marketflow up`` passes its broker in ``MARKETFLOW_KAFKA_BOOTSTRAP``."""
    return Outcome(
        True,
        f"{measure} not measured: no Kafka configured (MARKETFLOW_KAFKA_BOOTSTRAP is unset;"
        " `marketflow up` sets it).",
        {},
    )


def measure_lag_outcome(
    kafka: KafkaTopicResource, settings: MonitoringSettings, now: float
) -> Outcome:
    if not kafka.bootstrap_servers:
        return no_broker_outcome("Stream lag")
    probe = lagmod.make_probe(kafka.bootstrap_servers, kafka.topic_name, security=kafka.security)
    try:
        report = lagmod.measure_lag(
            lagmod.stream_checkpoint(kafka.checkpoint_root, kafka.topic_name), probe, now
        )
    except Exception as exc:  # noqa: BLE001 - an unreachable broker is a failed check
        return refused_outcome(kafka) or unreachable_outcome(kafka.bootstrap_servers, exc)
    finally:
        probe.close()
    return lag_outcome(report, settings, now)


def refused_outcome(kafka: KafkaTopicResource) -> Outcome | None:
    """When the broker answers but refuses this client's certificate or password, a failed
    check that says so (a configuration problem, not an outage); else None."""
    from marketflow_assets.kafka_client import KafkaAccessError, preflight

    try:
        preflight(kafka.bootstrap_servers, kafka.security, timeout_s=5)
    except KafkaAccessError as exc:
        return Outcome(False, f"Stream lag unknown: {exc}", {"lag_seconds": -1.0})
    except Exception:  # noqa: BLE001 - anything else: the outage message
        return None
    return None


def topic_counts(kafka: KafkaTopicResource) -> tuple[int, int]:
    """(records held in the price topic, in the dead-letter topic)."""
    counts = []
    for topic in (kafka.topic_name, kafka.dlq_topic):
        probe = lagmod.make_probe(kafka.bootstrap_servers, topic, security=kafka.security)
        try:
            counts.append(lagmod.topic_totals(probe))
        finally:
            probe.close()
    return counts[0], counts[1]


def dead_letter_outcome(
    published: int, dead: int, settings: MonitoringSettings, window: str
) -> Outcome:
    return rate_outcome(
        "dead letter",
        lagmod.rate(dead, published),
        dead,
        dead + published,
        settings.dlq_rate_warn,
        settings.dlq_rate_error,
        window,
    )


@dg.asset_check(
    asset=RAW,
    name=LAG_CHECK,
    description=(
        "Age of the oldest Kafka record not yet written to raw Parquet, from the streaming job's"
        " checkpoint and the broker: WARN > MARKETFLOW_LAG_WARN_SECONDS (60), ERROR >"
        " MARKETFLOW_LAG_ERROR_SECONDS (180)."
    ),
)
def stream_lag_check(kafka: KafkaTopicResource) -> dg.AssetCheckResult:
    return measure_lag_outcome(kafka, load_monitoring_settings(), time.time()).to_result()


@dg.asset_check(
    asset=RAW,
    name=DLQ_CHECK,
    description=(
        "Share of ingested records sent to the dead-letter topic: WARN > MARKETFLOW_DLQ_RATE_WARN"
        " (0.05), ERROR > MARKETFLOW_DLQ_RATE_ERROR (0.25)."
    ),
)
def dead_letter_rate_check(kafka: KafkaTopicResource) -> dg.AssetCheckResult:
    if not kafka.bootstrap_servers:
        return no_broker_outcome("Dead-letter rate").to_result()
    published, dead = topic_counts(kafka)
    outcome = dead_letter_outcome(
        published, dead, load_monitoring_settings(), "all records the broker holds"
    )
    return outcome.to_result()


@dg.asset_check(
    asset=RAW,
    name=REJECT_CHECK,
    description=(
        "Share of Kafka messages the streaming job rejected (raw_prices_rejects/): WARN >"
        " MARKETFLOW_REJECT_RATE_WARN (0.01), ERROR > MARKETFLOW_REJECT_RATE_ERROR (0.10)."
    ),
)
def reject_rate_check(kafka: KafkaTopicResource) -> dg.AssetCheckResult:
    return reject_outcome(kafka, load_monitoring_settings(), time.time()).to_result()


STREAM_CHECKS = [stream_lag_check, dead_letter_rate_check, reject_rate_check]
