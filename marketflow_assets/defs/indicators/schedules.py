"""Schedule re-materializing the recent indicator partitions.

Every 15 minutes one run recomputes the previous and the current hour (in order, one run), so rows
that reached the raw dataset late, or while the automation sensor was off, are folded in without
anyone watching. Idempotent writes make a run with nothing new a no-op on the tables.
"""

from datetime import timedelta

import dagster as dg

from marketflow_assets.defs.common.partitions import floor_hour
from marketflow_assets.defs.indicators.jobs import partition_key_for, refresh_indicators_job
from marketflow_assets.defs.indicators.sensors import run_request_for
from marketflow_assets.raw_dataset import list_raw_files
from marketflow_assets.resources.raw_data import RawDataResource

RECENT_HOURS = 2


@dg.schedule(
    name="recent_indicators_schedule",
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    job=refresh_indicators_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 15 min: recompute price_indicators + market_movers for the last 2 hours.",
)
def recent_indicators_schedule(
    context: dg.ScheduleEvaluationContext, raw_data: RawDataResource
) -> dg.RunRequest | dg.SkipReason:
    now = context.scheduled_execution_time
    start = floor_hour(now - timedelta(hours=RECENT_HOURS - 1))
    if not list_raw_files(raw_data.raw_dir, start - timedelta(minutes=5), now + timedelta(hours=1)):
        return dg.SkipReason(f"no raw data since {start.isoformat()}")
    return run_request_for(
        partition_key_for(start), partition_key_for(now), run_key=f"recent-{now.isoformat()}"
    )
