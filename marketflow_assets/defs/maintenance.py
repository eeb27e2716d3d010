"""Housekeeping that keeps a long-running Marketflow flat: raw compaction and run retention.

* ``compact_raw_prices_job`` (schedule ``compact_raw_prices_schedule``, hourly at minute 2) runs
  :func:`marketflow_assets.compaction.compact` -- the same code as ``marketflow compact`` -- so
  Delta OPTIMIZE of the partitions with closed hours, VACUUM past the retention, checkpoint.
* ``purge_old_runs_job`` (schedule ``purge_old_runs_schedule``, hourly at minute 17) deletes the
  finished runs of the high-frequency jobs (the automatic refresh, about one run per poll, the
  check jobs and this module's own jobs) older than ``keep_hours`` (default 24) with Dagster's
  public ``DagsterInstance.delete_run``, which also deletes their event log. The newest
  successful run of each partition (or partition range) is kept whatever its age, so every
  partition keeps its latest materialization and check results in the UI. Runs of other jobs
  (backfills launched by hand, ``marketflow refresh``) are never purged.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from marketflow_assets.compaction import compact
from marketflow_assets.defs.indicators.jobs import RANGE_END_TAG, RANGE_START_TAG
from marketflow_assets.resources.raw_data import RawDataResource

PARTITION_TAG = "dagster/partition"
#: Jobs launched by sensors/schedules (every few seconds to hourly), this module's included.
PURGED_JOBS = (
    "refresh_indicators_job",
    "monitoring_checks_job",
    "all_checks_job",
    "compact_raw_prices_job",
    "purge_old_runs_job",
)
FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]


# ------------------------------------------------------------------------------------------------
# Compaction
# ------------------------------------------------------------------------------------------------
@dg.op(description="OPTIMIZE + VACUUM the raw_prices Delta table (closed hours; rows unchanged).")
def compact_raw_prices(context: dg.OpExecutionContext, raw_data: RawDataResource) -> None:
    report = compact(raw_data.raw_dir, log=context.log.info)
    context.log.info(report.summary())


@dg.job(
    name="compact_raw_prices_job",
    description="Compacts the raw_prices Delta table: OPTIMIZE of the partitions with closed "
    "hours (one commit; readers keep their pinned version), VACUUM past the retention, "
    "checkpoint and log cleanup. Same as `marketflow compact`.",
    executor_def=dg.in_process_executor,
    tags={"marketflow/pipeline": "maintenance"},
)
def compact_raw_prices_job():
    compact_raw_prices()


compact_raw_prices_schedule = dg.ScheduleDefinition(
    name="compact_raw_prices_schedule",
    job=compact_raw_prices_job,
    cron_schedule="2 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly (minute 2): compact the hours of raw_prices that have closed.",
)


# ------------------------------------------------------------------------------------------------
# Run retention
# ------------------------------------------------------------------------------------------------
@dataclass
class PurgeReport:
    cutoff: datetime
    examined: int = 0
    deleted: list[str] = field(default_factory=list)
    kept_latest: int = 0


def _partition_of(tags) -> tuple[str, ...]:
    if PARTITION_TAG in tags:
        return (tags[PARTITION_TAG],)
    if RANGE_START_TAG in tags:
        return (tags[RANGE_START_TAG], tags.get(RANGE_END_TAG, ""))
    return ()


def _tags_filter(key: tuple[str, ...]) -> dict[str, str]:
    if len(key) == 1:
        return {PARTITION_TAG: key[0]}
    if len(key) == 2:
        return {RANGE_START_TAG: key[0], RANGE_END_TAG: key[1]}
    return {}


def purge_old_runs(
    instance: dg.DagsterInstance,
    keep_hours: float = 24,
    now: datetime | None = None,
    jobs: tuple[str, ...] = PURGED_JOBS,
    limit: int = 2000,
) -> PurgeReport:
    """Delete finished runs of ``jobs`` created before ``now - keep_hours`` (at most ``limit``),
    except the newest successful run of each partition / partition range."""
    now = now or datetime.now(UTC)
    report = PurgeReport(now - timedelta(hours=keep_hours))
    newest_success: dict[tuple[str, tuple[str, ...]], str | None] = {}
    for job in jobs:
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=job, statuses=FINISHED, created_before=report.cutoff),
            limit=limit - len(report.deleted),
            ascending=True,
        )
        for record in records:
            run = record.dagster_run
            report.examined += 1
            key = (job, _partition_of(run.tags))
            if key not in newest_success:
                latest = instance.get_run_records(
                    filters=dg.RunsFilter(
                        job_name=job,
                        statuses=[dg.DagsterRunStatus.SUCCESS],
                        tags=_tags_filter(key[1]),
                    ),
                    limit=1,
                )
                newest_success[key] = latest[0].dagster_run.run_id if latest else None
            if newest_success[key] == run.run_id:
                report.kept_latest += 1
                continue
            instance.delete_run(run.run_id)
            report.deleted.append(run.run_id)
        if len(report.deleted) >= limit:
            break
    return report


class PurgeConfig(dg.Config):
    keep_hours: float = 24.0
    max_runs: int = 2000


@dg.op(description="Delete old runs (and their event logs) of the high-frequency jobs.")
def purge_runs(context: dg.OpExecutionContext, config: PurgeConfig) -> None:
    report = purge_old_runs(context.instance, config.keep_hours, limit=config.max_runs)
    context.log.info(
        f"purged {len(report.deleted)} run(s) created before {report.cutoff.isoformat()} of "
        f"{', '.join(PURGED_JOBS)}; kept {report.kept_latest} latest-per-partition run(s)"
    )


@dg.job(
    name="purge_old_runs_job",
    description="Run retention: deletes finished runs older than keep_hours (default 24) of the "
    "automatic refresh and check jobs, keeping each partition's newest successful run.",
    executor_def=dg.in_process_executor,
    tags={"marketflow/pipeline": "maintenance"},
)
def purge_old_runs_job():
    purge_runs()


purge_old_runs_schedule = dg.ScheduleDefinition(
    name="purge_old_runs_schedule",
    job=purge_old_runs_job,
    cron_schedule="17 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly (minute 17): run retention for the high-frequency jobs.",
)

MAINTENANCE_JOBS = [compact_raw_prices_job, purge_old_runs_job]
MAINTENANCE_SCHEDULES = [compact_raw_prices_schedule, purge_old_runs_schedule]
