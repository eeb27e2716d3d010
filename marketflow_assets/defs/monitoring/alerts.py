"""``marketflow_alert_sensor``: one alert per state change of any asset check or job.

Every 15 s the sensor reads, from the Dagster instance, the latest evaluation of every asset
check in the code location (whether it ran in a run or was recorded by
``monitoring_checks_sensor``) and the runs that finished since its last tick. It keeps the last
known state of each check (``passed`` / ``WARN`` / ``ERROR`` / ``EXECUTION_FAILED``) and of each
job (``SUCCESS`` / ``FAILURE``) in its cursor and alerts only when a state changes — a check that
stays red for an hour alerts once, and once more when it recovers. No storms.

An alert is a log line (WARNING for failures, INFO for recoveries) and, when
``MARKETFLOW_ALERT_WEBHOOK_URL`` is set, an HTTP POST of ``{"text": ...}`` (the Slack incoming
webhook format, also accepted by Mattermost, Teams' Slack-compatible hooks, etc.), retried up to
3 times with backoff on connection errors, 429 and 5xx. The webhook URL is a secret: only its host
is ever logged.

``MARKETFLOW_ALERT_MIN_SEVERITY=ERROR`` treats checks in WARN as healthy (no alert when a
freshness check hovers around its warn threshold); the default ``WARN`` alerts on both.

Runs that failed only because a blocking check failed are not alerted separately (the check's
own alert says more). Unknown previous state counts as healthy, so failures that exist when the
sensor first starts are alerted once.

Also alerted: sensor and schedule ticks that fail (any code location of the instance), and —
from outside Dagster — failing ingest polls (:mod:`marketflow_assets.monitoring.ingest_health`).
Pacing (no storms): a check that changed state again within ``MARKETFLOW_ALERT_COOLDOWN_SECONDS``
(60) of its last alert is held until the cooldown ends (a flap that settles back says nothing);
at most :data:`MAX_ALERTS_PER_TICK` messages per tick, the rest summed up in one; and during the
first ``MARKETFLOW_ALERT_STARTUP_GRACE_SECONDS`` (600) after the code location loaded (a fresh
``marketflow up``), failures that only mean "no data yet" (metadata ``no_data``) or a streaming
job still catching up on its start-up backlog (``catching_up``) are held.

Every alert leaves through :func:`emit_alert` (log line + webhook), the one place to add sinks.
"""

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from marketflow_assets.defs.common.launch import launcher
from marketflow_assets.defs.monitoring.history import (
    database_url,
    record_alerts,
    record_latest_checks,
    record_run_failures,
)
from marketflow_assets.monitoring.alerts import (  # noqa: F401 - re-exported: the sensor's API
    PASSED,
    RUN_OK,
    Alert,
    emit_alert,
    post_webhook,
    webhook_host,
)
from marketflow_assets.settings import (
    MonitoringSettings,
    load_check_settings,
    load_monitoring_settings,
)

log = logging.getLogger(__name__)

SENSOR_INTERVAL_SECONDS = 15
#: On its first tick the sensor looks at runs that finished this long ago at most.
FIRST_TICK_LOOKBACK = timedelta(minutes=15)
MAX_ALERTS_PER_TICK = 10
#: When this code location was loaded (``marketflow up`` starts it): the start-up grace origin.
LOADED_AT = time.time()

EXECUTION_FAILED = "EXECUTION_FAILED"
RUN_FAILED = "FAILURE"
_FINISHED_RUN = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
_CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"
# ``status`` values of the check execution records ``DagsterInstance`` returns. Dagster exports
# no public name for their enum, so they are compared by value.
_SUCCEEDED = "SUCCEEDED"
_FAILED = "FAILED"


# ------------------------------------------------------------------------------------------
# State of checks and runs
# ------------------------------------------------------------------------------------------
def check_state(instance: dg.DagsterInstance, record) -> tuple[str | None, str]:
    """(state, detail) of a check's latest execution; state None while it is in progress."""
    status = record.status.value
    if status == _SUCCEEDED:
        return PASSED, record.evaluation.description or ""
    if status == _FAILED:
        evaluation = record.evaluation
        return evaluation.severity.value, evaluation.description or ""
    # PLANNED: still running, or its run ended without an evaluation: either the check's own
    # step raised (EXECUTION_FAILED), or it never ran because an upstream step failed or the run
    # was canceled — then the run's alert says why, and the check keeps its last state.
    run = instance.get_run_by_id(record.run_id) if record.run_id else None
    if run is None or not run.is_finished:
        return None, ""
    step = record.event.step_key if record.event else None
    failures = instance.all_logs(record.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    own = [e for e in failures if step and e.step_key == step]
    if not own:
        return None, ""
    error = own[0].dagster_event.step_failure_data.error
    return EXECUTION_FAILED, f"The check raised: {_root_message(error) if error else 'an error'}"


#: Metadata flags of failures that are expected while a fresh pipeline starts: no data yet, or a
#: streaming job still working through its start-up backlog.
STARTUP_FLAGS = ("no_data", "catching_up")


def _no_data(record) -> bool:
    """True when the check's latest evaluation failed only for lack of data or start-up
    backlog (:data:`STARTUP_FLAGS` in its metadata)."""
    evaluation = getattr(record, "evaluation", None)
    metadata = (evaluation.metadata or {}) if evaluation is not None else {}
    return any(bool(getattr(metadata.get(f), "value", metadata.get(f))) for f in STARTUP_FLAGS)


def latest_check_records(instance: dg.DagsterInstance, check_keys) -> dict:
    """The latest execution record of each check that has one."""
    records = {}
    for key in check_keys:
        record = instance.get_latest_asset_check_evaluation_record(key)
        if record is not None:
            records[key] = record
    return records


def check_alerts(
    instance: dg.DagsterInstance,
    check_keys: list[dg.AssetCheckKey],
    known: dict[str, str],
    min_severity: str = "WARN",
    *,
    now: float | None = None,
    last_alert: dict[str, float] | None = None,
    cooldown: float = 0.0,
    grace_until: float = 0.0,
    records: dict | None = None,
) -> list[Alert]:
    """Alerts for checks whose state differs from ``known`` (updated in place). With
    ``min_severity="ERROR"`` a check in WARN counts as passed (no alert either way).

    A change within ``cooldown`` seconds of the check's previous alert (``last_alert``, updated
    in place) is held, as is a "no data yet" failure before ``grace_until``; held changes are
    alerted by a later tick if they persist. ``records``: the checks' latest execution records
    when the caller has them (:func:`latest_check_records`)."""
    now = time.time() if now is None else now
    last_alert = {} if last_alert is None else last_alert
    if records is None:
        records = latest_check_records(instance, check_keys)
    alerts = []
    for key in sorted(records, key=lambda k: k.to_user_string()):
        state, detail = check_state(instance, records[key])
        if state == "WARN" and min_severity == "ERROR":
            state = PASSED
        name = key.to_user_string()
        previous = known.get(name, PASSED)
        if state is None or state == previous:
            continue
        if state != PASSED and now < grace_until and _no_data(records[key]):
            continue  # start-up grace: nothing has arrived yet, say so only if it persists
        if now - last_alert.get(name, float("-inf")) < cooldown:
            continue  # flapping: held until the cooldown ends
        known[name] = state
        last_alert[name] = now
        where = f" (run {records[key].run_id[:8]})" if records[key].run_id else ""
        if state == PASSED:
            text = f"RESOLVED: Marketflow check {name} passes again{where}. {detail}"
        else:
            text = f"{state}: Marketflow check {name} failed{where}. {detail}"
        alerts.append(Alert(name, previous, state, text.strip()))
    return alerts


def _job_key(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """Named jobs by name; ad-hoc materializations (``__ASSET_JOB`` etc.) by the steps they ran,
    so a failing check run is not "resolved" by an unrelated materialization."""
    if not run.job_name.startswith("__"):
        return f"job:{run.job_name}"
    started = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
    steps = sorted({e.step_key for e in started if e.step_key})
    return f"job:{run.job_name}[{','.join(steps)}]"


def _root_message(error) -> str:
    """First line of the innermost cause (e.g. the driver's error, not Dagster's wrapper)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    text = (error.message or "").strip()
    return text.splitlines()[0] if text else error.cls_name or "unknown error"


def _failure(instance: dg.DagsterInstance, run_id: str) -> tuple[bool, str]:
    """(failed only by blocking checks, root error message) of a failed run."""
    failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    errors = [
        e.dagster_event.step_failure_data.error
        for e in failures
        if e.dagster_event and e.dagster_event.step_failure_data
    ]
    errors = [e for e in errors if e is not None]
    only_checks = bool(errors) and all(e.cls_name == _CHECK_FAILED_ERROR for e in errors)
    if errors:
        step = failures[0].step_key or "a step"
        return only_checks, f"{step}: {_root_message(errors[0])}"
    run_failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    message = (run_failures[-1].message or "").strip() if run_failures else ""
    return False, message.splitlines()[0] if message else "no error recorded"


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def run_alerts(
    instance: dg.DagsterInstance,
    updated_after: datetime,
    known: dict[str, str],
    failures: list[tuple] | None = None,
) -> tuple[list[Alert], datetime]:
    """Alerts for jobs whose last finished run changed state; returns the new high-water mark.
    Every failed run seen is appended to ``failures`` as ``(run_id, failed_at, job_name,
    launched_by, partition, error)`` (the ``run_failures`` rows)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=list(_FINISHED_RUN), updated_after=updated_after),
        order_by="update_timestamp",
        ascending=True,
        limit=500,
    )
    alerts = []
    newest = updated_after
    for record in records:
        newest = max(newest, _aware(record.update_timestamp))
        run = record.dagster_run
        key = _job_key(instance, run)
        previous = known.get(key, RUN_OK)
        if run.status == dg.DagsterRunStatus.SUCCESS:
            if previous != RUN_OK:
                known[key] = RUN_OK
                text = f"RESOLVED: Marketflow {key} succeeded again (run {run.run_id[:8]})."
                alerts.append(Alert(key, previous, RUN_OK, text))
            continue
        only_checks, message = _failure(instance, run.run_id)
        if failures is not None:
            failures.append(
                (
                    run.run_id,
                    _aware(record.update_timestamp),
                    run.job_name,
                    launcher(run.tags),
                    run.tags.get("dagster/partition"),
                    message,
                )
            )
        if only_checks or previous == RUN_FAILED:
            continue  # the check alert covers it / already alerted for this failure streak
        known[key] = RUN_FAILED
        text = f"FAILURE: Marketflow {key} run {run.run_id[:8]} failed: {message}"
        alerts.append(Alert(key, previous, RUN_FAILED, text))
    return alerts, newest


def tick_alerts(instance: dg.DagsterInstance, known: dict[str, str]) -> list[Alert]:
    """Alerts for sensors and schedules whose latest tick failed / works again."""
    alerts = []
    if instance.schedule_storage is None:  # an ephemeral instance keeps no ticks
        return alerts
    for st in instance.all_instigator_state():
        ticks = instance.get_ticks(st.instigator_origin_id, st.selector_id, limit=1)
        if not ticks or ticks[0].status.value not in ("SUCCESS", "SKIPPED", "FAILURE"):
            continue
        tick = ticks[0]
        key = f"{st.instigator_type.value.lower()}:{st.instigator_name}"
        state = RUN_FAILED if tick.status.value == "FAILURE" else RUN_OK
        previous = known.get(key, RUN_OK)
        if state == previous:
            continue
        known[key] = state
        if state == RUN_OK:
            text = f"RESOLVED: Marketflow {key} ticks succeed again."
        else:
            error = _root_message(tick.error) if tick.error else "no error recorded"
            text = f"FAILURE: Marketflow {key} tick failed: {error}"
        alerts.append(Alert(key, previous, state, text))
    return alerts


def cap_alerts(alerts: list[Alert], limit: int = MAX_ALERTS_PER_TICK) -> list[Alert]:
    """At most ``limit`` messages: beyond that, one summary instead of the rest (no storm)."""
    if len(alerts) <= limit:
        return alerts
    rest = alerts[limit - 1 :]
    failing = sum(1 for a in rest if a.is_failure)
    text = (
        f"ERROR: Marketflow: {len(rest)} more state changes in this tick ({failing} failures,"
        f" {len(rest) - failing} recoveries): {', '.join(a.key for a in rest[:20])}"
        " — see the Dagster UI."
    )
    return [*alerts[: limit - 1], Alert("summary", PASSED, "ERROR", text)]


# ------------------------------------------------------------------------------------------
# Sensor
# ------------------------------------------------------------------------------------------
def load_cursor(raw: str | None) -> dict:
    state = json.loads(raw) if raw else {}
    state.setdefault("checks", {})
    state.setdefault("runs", {})
    state.setdefault("ticks", {})
    state.setdefault("last_alert", {})
    return state


def evaluate_alerts(
    instance: dg.DagsterInstance,
    check_keys: list[dg.AssetCheckKey],
    cursor: str | None,
    webhook_url: str | None,
    now: datetime | None = None,
    min_severity: str = "WARN",
    pacing: MonitoringSettings | None = None,
    started_at: float = LOADED_AT,
    failures: list[tuple] | None = None,
    records: dict | None = None,
) -> tuple[list[Alert], str]:
    """Find state changes since ``cursor``, send one alert each; return (alerts, new cursor).

    ``pacing`` gives the cooldown and the start-up grace (none when omitted); the failed runs
    seen are appended to ``failures`` (:func:`run_alerts`)."""
    state = load_cursor(cursor)
    now = now or datetime.now(UTC)
    cooldown = pacing.alert_cooldown_seconds if pacing else 0.0
    grace_until = started_at + (pacing.startup_grace_seconds if pacing else 0.0)
    after = (
        datetime.fromtimestamp(state["runs_after"], UTC)
        if "runs_after" in state
        else now - FIRST_TICK_LOOKBACK
    )
    alerts = check_alerts(
        instance,
        check_keys,
        state["checks"],
        min_severity,
        now=now.timestamp(),
        last_alert=state["last_alert"],
        cooldown=cooldown,
        grace_until=grace_until,
        records=records,
    )
    more, newest = run_alerts(instance, after, state["runs"], failures)
    alerts += more
    alerts += tick_alerts(instance, state["ticks"])
    state["runs_after"] = newest.timestamp()
    alerts = cap_alerts(alerts)
    for alert in alerts:
        emit_alert(alert, webhook_url)
    return alerts, json.dumps(state, sort_keys=True)


def run_skipped_at(instance: dg.DagsterInstance) -> Callable[[Any], datetime | None]:
    """``skipped_at`` of :func:`record_latest_checks`: the end of a planned check's run when
    that run succeeded (the check yielded no result: SKIPPED), else None."""

    def skipped_at(record) -> datetime | None:
        run = instance.get_run_record_by_id(record.run_id) if record.run_id else None
        if run is None or run.dagster_run.status != dg.DagsterRunStatus.SUCCESS:
            return None
        return datetime.fromtimestamp(run.end_time, UTC) if run.end_time else None

    return skipped_at


def record_health(
    records: dict, failures: list[tuple], instance: dg.DagsterInstance | None = None
) -> None:
    """The Pipeline page's truth: the latest evaluation of every check and the failed runs. The
    checks ``monitoring_checks_sensor`` evaluates are recorded by it, stamped with its tick."""
    from marketflow_assets.defs.monitoring.checks import FRESHNESS_CHECK_KEYS
    from marketflow_assets.defs.raw_prices import checks as raw_checks

    raw_keys = (dg.AssetCheckKey(raw_checks.ASSET, name) for name in raw_checks.OUTCOMES)
    recorded = {*FRESHNESS_CHECK_KEYS, *raw_keys}
    others = [record for key, record in records.items() if key not in recorded]
    if not others and not failures:
        return
    url = database_url()
    record_latest_checks(url, others, run_skipped_at(instance) if instance else None)
    record_run_failures(url, failures)


def record_alert_history(alerts: list[Alert]) -> int:
    """Also keep the alerts in PostgreSQL (``alert_history``) for the dashboard's Pipeline page."""
    if not alerts:
        return 0
    return record_alerts(database_url(), alerts)


@dg.sensor(
    name="marketflow_alert_sensor",
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Alerts once per state change of any asset check or job: a log line and, when"
        " MARKETFLOW_ALERT_WEBHOOK_URL is set, a Slack-compatible JSON POST."
    ),
)
def marketflow_alert_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    check_keys = list(context.repository_def.asset_graph.asset_check_keys)
    settings = load_check_settings()
    failures: list[tuple] = []
    records = latest_check_records(context.instance, check_keys)  # once per tick, for both
    alerts, cursor = evaluate_alerts(
        context.instance,
        check_keys,
        context.cursor,
        settings.alert_webhook_url,
        min_severity=settings.alert_min_severity,
        pacing=load_monitoring_settings(),
        failures=failures,
        records=records,
    )
    for alert in alerts:
        (context.log.warning if alert.is_failure else context.log.info)(alert.text)
    record_alert_history(alerts)
    record_health(records, failures, context.instance)
    if not alerts:
        return dg.SensorResult(
            cursor=cursor, skip_reason=dg.SkipReason("no check or job changed state")
        )
    return dg.SensorResult(cursor=cursor)
