"""``reconciliation_sensor``: late raw data reaches PostgreSQL by itself, however old.

The observation and automation sensors watch the newest ``date=`` directories only, so rows that
land in an older day (a replay, a late batch) would wait for ``marketflow refresh``. This sensor,
every ``MARKETFLOW_RECONCILE_INTERVAL_SECONDS`` (default 300 s; it ticks every 30 s and skips
until the interval passed), compares raw rows per hour with ``price_indicators`` rows per hour
(:mod:`marketflow_assets.reconcile`) for the days whose raw files changed since it last found
them reconciled (its cursor keeps each verified day's signature: the first tick compares every
day, later ones normally only today). Hours still being refreshed (ending less than 120 s ago)
are not compared.

For differing hours it requests one run of ``refresh_indicators_job`` over the partitions from
the oldest differing hour to the newest partition, tagged ``marketflow/trigger=reconciliation``.
The range runs to the newest partition because a late row changes the EMA (and the 5-minute
changes) of every later row of its coin: the run's first hour is refreshed incrementally from the
late row on, its write invalidates the later hours' ledger rows, and the later hours are then
recomputed in full in the same run (``defs/indicators/incremental.py``) - so the table equals a full
recompute. Differing hours covered by a refresh run still in flight are left to that run (checked
again next time); the range may overlap an in-flight live run of the newest hour, which the
refresh lock serialises. An hour still differing with the same counts after ``MAX_ATTEMPTS``
requests is not requested again (it is logged, and the ``price_indicators_reconciled`` check
keeps failing) until its counts change.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import dagster as dg

from marketflow_assets import reconcile
from marketflow_assets.defs.common.partitions import HOURLY, PARTITION_FMT
from marketflow_assets.defs.common.runs import in_flight_runs
from marketflow_assets.defs.indicators.jobs import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    partition_key_for,
    partition_range_tags,
    refresh_indicators_job,
)
from marketflow_assets.defs.indicators.sensors import LIVE_TRIGGER_TAG, stale_live_run
from marketflow_assets.raw_dataset import raw_days, snapshot
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.settings import load_reconcile_interval

TRIGGER = "reconciliation"
TICK_SECONDS = 30
MAX_ATTEMPTS = 3


def _parse_key(key: str) -> datetime:
    return datetime.strptime(key, PARTITION_FMT).replace(tzinfo=UTC)


def in_flight_hours(instance) -> tuple[list[tuple[datetime, datetime]], str | None]:
    """``[(first hour, last hour)]`` of the refresh runs still queued or running (the live
    follower's stale runs excepted, as for ``indicators_follow_raw_prices``), and one run id."""
    spans, run_id = [], None
    for record in in_flight_runs(instance, refresh_indicators_job.name, limit=50):
        if stale_live_run(record):
            continue
        tags = record.dagster_run.tags
        if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
            span = (_parse_key(tags[RANGE_START_TAG]), _parse_key(tags[RANGE_END_TAG]))
        elif "dagster/partition" in tags:
            hour = _parse_key(tags["dagster/partition"])
            span = (hour, hour)
        else:  # no partition tag: treat as covering everything
            span = (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
        spans.append(span)
        run_id = run_id or record.dagster_run.run_id
    return spans, run_id


def reconcile_tick(
    instance,
    postgres: PostgresResource,
    raw_dir,
    cursor: dict,
    now: datetime | None = None,
    partitions_def=HOURLY,
):
    """One comparison: ``(run_requests, next_cursor, lines)`` (``lines``: what was found)."""
    now = now or datetime.now(UTC)
    verified: dict[str, str] = dict(cursor.get("days", {}))
    attempts: dict[str, list] = dict(cursor.get("attempts", {}))
    raw_dir = snapshot(raw_dir)  # one pinned table version for the whole comparison
    signatures = {day: reconcile.day_signature(raw_dir, day) for day in raw_days(raw_dir)}
    changed = [day for day, sig in signatures.items() if verified.get(day.isoformat()) != sig]
    # days no longer in the dataset drop out of the cursor
    verified = {d: s for d, s in verified.items() if d in {x.isoformat() for x in signatures}}
    lines: list[str] = []
    if not changed:
        return [], {"days": verified, "attempts": attempts}, lines
    raw = reconcile.raw_rows_per_hour(raw_dir, changed)
    with postgres.get_connection() as conn:
        stored = reconcile.indicator_rows_per_hour(
            conn,
            reconcile.day_start(min(changed)),
            reconcile.day_start(max(changed)) + reconcile.DAY,
        )
    changed_set = set(changed)
    stored = {h: n for h, n in stored.items() if h.date() in changed_set}
    before = reconcile.settled_before(now)
    diffs = reconcile.differing_hours(raw, stored, before)
    unsettled_days = {h.date() for h in set(raw) | set(stored) if h + reconcile.HOUR > before}
    spans, busy_run = in_flight_hours(instance)
    wanted, busy, given_up = [], [], []
    for diff in diffs:
        key = partition_key_for(diff.hour)
        seen = attempts.get(key)
        counts = [diff.raw_rows, diff.indicator_rows]
        if any(lo <= diff.hour <= hi for lo, hi in spans):
            busy.append(diff)
        elif seen is not None and seen[:2] == counts and seen[2] >= MAX_ATTEMPTS:
            given_up.append(diff)
        else:
            wanted.append(diff)
    pending_days = {d.hour.date() for d in diffs} | unsettled_days
    for day in changed:
        if day not in pending_days:
            verified[day.isoformat()] = signatures[day]
    differing_keys = {partition_key_for(d.hour) for d in diffs}
    attempts = {k: v for k, v in attempts.items() if k in differing_keys}
    if busy:
        lines.append(
            f"{len(busy)} differing hour(s) left to run {busy_run} in flight: "
            + ", ".join(d.describe() for d in busy[:5])
        )
    if given_up:
        lines.append(
            f"{len(given_up)} hour(s) still differ after {MAX_ATTEMPTS} reconciliation runs "
            "(not requested again until their counts change): "
            + ", ".join(d.describe() for d in given_up[:5])
        )
    requests = []
    last_window = partitions_def.get_last_partition_window()
    if wanted and last_window is not None:
        first_hour = max(wanted[0].hour, partitions_def.start)
        first_key = partition_key_for(first_hour)
        last_key = partition_key_for(max(last_window.start, first_hour))
        tags = {LIVE_TRIGGER_TAG: TRIGGER}
        if first_key == last_key:
            request = dg.RunRequest(
                run_key=f"reconcile-{first_key}-{uuid.uuid4().hex[:8]}",
                partition_key=first_key,
                tags=tags,
            )
        else:
            request = dg.RunRequest(
                run_key=f"reconcile-{first_key}-{uuid.uuid4().hex[:8]}",
                tags={**tags, **partition_range_tags(first_key, last_key)},
            )
        requests.append(request)
        for diff in wanted:
            key = partition_key_for(diff.hour)
            seen = attempts.get(key)
            counts = [diff.raw_rows, diff.indicator_rows]
            n = seen[2] + 1 if seen is not None and seen[:2] == counts else 1
            attempts[key] = [*counts, n]
        lines.append(
            f"re-materializing {first_key} .. {last_key} (later hours too: the EMA flows forward)"
            f" for {len(wanted)} differing hour(s): "
            + ", ".join(d.describe() for d in wanted[:10])
            + (f" and {len(wanted) - 10} more" if len(wanted) > 10 else "")
        )
    return requests, {"days": verified, "attempts": attempts}, lines


@dg.sensor(
    name="reconciliation_sensor",
    description="Every MARKETFLOW_RECONCILE_INTERVAL_SECONDS (300 s): compares raw rows per hour "
    "with price_indicators rows per hour and re-materializes the hours that differ, however old "
    "(from the oldest one to the newest partition, as the EMA flows forward).",
    job=refresh_indicators_job,
    minimum_interval_seconds=TICK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def reconciliation_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, raw_data: RawDataResource
) -> dg.SensorResult | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {}
    interval = load_reconcile_interval()
    last = float(cursor.get("last", 0.0))
    if time.time() - last < interval:
        return dg.SkipReason(
            f"last reconciliation {time.time() - last:.0f} s ago "
            f"(MARKETFLOW_RECONCILE_INTERVAL_SECONDS={interval:g})"
        )
    requests, state, lines = reconcile_tick(context.instance, postgres, raw_data.raw_dir, cursor)
    next_cursor = json.dumps({"last": time.time(), **state}, sort_keys=True)
    for line in lines:
        context.log.info(f"reconciliation: {line}")
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=next_cursor)
    summary = "; ".join(lines) or "raw_prices and price_indicators agree on every compared hour"
    return dg.SensorResult(skip_reason=summary, cursor=next_cursor)
