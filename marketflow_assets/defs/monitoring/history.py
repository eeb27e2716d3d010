"""Pipeline history in PostgreSQL: asset check results and alerts, for the dashboard.

Dagster keeps check evaluations in its own event log; the analyst dashboard reads only the
Marketflow tables, so the sensors also write what they see into ``check_results`` and
``alert_history`` (columns in :mod:`marketflow_assets.schema`):

* :func:`record_check_evaluations` — called by ``monitoring_checks_sensor`` with the evaluations
  it reports every minute (freshness of the three assets, raw data quality);
* :func:`record_alerts` — called by ``marketflow_alert_sensor`` with the alerts it sends (one per
  state change of any check or job, including the checks that run inside partition runs);
* :func:`record_latest_checks` — the same sensor, every tick: the latest evaluation of *every*
  asset check of the code location (WARN ones and those that run inside runs too), so the
  Pipeline page lists them all;
* :func:`record_run_failures` — the same sensor: every failed run it sees (``run_failures``).

Recording is best effort: a database that is down must not break monitoring or alerting, so
failures are logged (URL redacted) and swallowed. Re-recording the same evaluation time is a
no-op (``ON CONFLICT DO NOTHING`` on the primary keys).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from marketflow_assets.settings import redact_url

log = logging.getLogger(__name__)

INSERT_CHECK_RESULT = """
INSERT INTO check_results
    (check_key, evaluated_at, asset_key, check_name, passed, severity, description, metadata)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)
ON CONFLICT (check_key, evaluated_at) DO NOTHING
"""
INSERT_RUN_FAILURE = """
INSERT INTO run_failures (run_id, failed_at, job_name, launched_by, partition, error)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (run_id) DO NOTHING
"""
INSERT_ALERT = """
INSERT INTO alert_history (alerted_at, alert_key, previous_state, state, message)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (alerted_at, alert_key) DO NOTHING
"""


def plain_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Dagster metadata (``MetadataValue`` objects or plain values) as JSON-ready values."""
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        value = getattr(value, "value", value)
        if isinstance(value, str | int | float | bool) or value is None:
            out[key] = value
        else:
            out[key] = str(value)
    return out


def check_result_rows(evaluations: Iterable[Any], evaluated_at: datetime) -> list[tuple]:
    """Rows of ``check_results`` for Dagster ``AssetCheckEvaluation``s (or results with an
    ``asset_key``): one per evaluation, all stamped ``evaluated_at``."""
    rows = []
    for e in evaluations:
        asset = e.asset_key.to_user_string()
        severity = "PASSED" if e.passed else e.severity.value
        rows.append(
            (
                f"{asset}:{e.check_name}",
                evaluated_at,
                asset,
                e.check_name,
                bool(e.passed),
                severity,
                e.description,
                json.dumps(plain_metadata(e.metadata), default=str, sort_keys=True),
            )
        )
    return rows


def database_url(postgres: Any = None) -> str | None:
    """The URL a ``PostgresResource`` resolves to (configured, else the embedded server), or None
    with a log line when it cannot be had: recording history never stops monitoring."""
    try:
        if postgres is None:
            from marketflow_assets.resources.postgres import PostgresResource

            postgres = PostgresResource()
        return postgres.resolved_url()
    except Exception as exc:  # noqa: BLE001 - history is best effort
        log.warning("history not recorded: %s", " ".join(str(exc).split())[:300])
        return None


def _insert(postgres_url: str | None, table: str, sql: str, rows: list[tuple]) -> int:
    if not rows or not postgres_url:
        return 0
    try:
        import psycopg2
        import psycopg2.extras

        from marketflow_assets.schema import create_table_sql

        conn = psycopg2.connect(postgres_url, connect_timeout=5)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(create_table_sql(table))
                psycopg2.extras.execute_batch(cur, sql, rows)
        finally:
            conn.close()
        return len(rows)
    except Exception as exc:  # noqa: BLE001 - history is best effort, monitoring goes on
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        log.warning("could not record %s in %s: %s", table, redact_url(postgres_url), reason)
        return 0


def record_check_evaluations(
    postgres_url: str | None, evaluations: Iterable[Any], evaluated_at: datetime | None = None
) -> int:
    """Insert the evaluations into ``check_results``; returns the rows sent (0 on failure)."""
    rows = check_result_rows(evaluations, evaluated_at or datetime.now(UTC))
    return _insert(postgres_url, "check_results", INSERT_CHECK_RESULT, rows)


def record_alerts(
    postgres_url: str | None, alerts: Iterable[Any], alerted_at: datetime | None = None
) -> int:
    """Insert alerts (objects with ``key``, ``previous``, ``state``, ``text``) into
    ``alert_history``; returns the rows sent (0 on failure)."""
    at = alerted_at or datetime.now(UTC)
    rows = [(at, a.key, a.previous, a.state, a.text) for a in alerts]
    return _insert(postgres_url, "alert_history", INSERT_ALERT, rows)


#: Description of a run-based check Dagster recorded as SKIPPED (no result in a successful run).
SKIPPED_IN_RUN = "Skipped: nothing to check in the run's window (see the run's log)."


def latest_check_rows(
    records: Iterable[Any], skipped_at: Callable[[Any], datetime | None] | None = None
) -> list[tuple]:
    """Rows of ``check_results`` for Dagster's latest check execution records: the finished ones,
    each stamped with the time of its own evaluation event (re-recording is a no-op).
    ``skipped_at(record)``: for a planned record without a result, the end of its run when that
    run succeeded (Dagster's SKIPPED), else None; such records get a "skipped" row."""
    rows = []
    for record in records:
        if record.status.value == "PLANNED" and skipped_at:
            at = skipped_at(record)
            if at is not None:
                asset = record.key.asset_key.to_user_string()
                name = record.key.name
                meta = json.dumps({"skipped": True, "run_id": record.run_id}, sort_keys=True)
                rows.append(
                    (f"{asset}:{name}", at, asset, name, True, "PASSED", SKIPPED_IN_RUN, meta)
                )
            continue
        # planned, running, or planned but never evaluated (its run failed first): no result
        if record.status.value not in ("SUCCEEDED", "FAILED") or record.event is None:
            continue
        evaluation = record.evaluation
        at = datetime.fromtimestamp(record.event.timestamp, UTC)
        rows += check_result_rows([evaluation], at)
    return rows


def record_latest_checks(
    postgres_url: str | None,
    records: Iterable[Any],
    skipped_at: Callable[[Any], datetime | None] | None = None,
) -> int:
    """Insert the latest evaluation of each check (see :func:`latest_check_rows`)."""
    rows = latest_check_rows(records, skipped_at)
    return _insert(postgres_url, "check_results", INSERT_CHECK_RESULT, rows)


def record_run_failures(postgres_url: str | None, failures: Iterable[tuple]) -> int:
    """Insert failed runs ``(run_id, failed_at, job_name, launched_by, partition, error)``."""
    return _insert(postgres_url, "run_failures", INSERT_RUN_FAILURE, list(failures))
