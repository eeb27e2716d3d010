"""Automation: recompute the indicator partitions that new raw data touches, within seconds.

Reads the ``raw_prices`` materializations reported by the observation sensor since its cursor,
takes the hours their new rows fall in (``oldest_new_ts`` .. ``newest_ts``) and launches one run of
``refresh_indicators_job`` over that partition range (normally just the current hour). Because a
partition's EMA continues from its predecessor, a range always runs in time order inside one run.
While such a run is still queued or running, the sensor waits and merges the new data into the next
request, so runs never race on the same partitions.

Live fast path: ``marketflow up`` also runs ``marketflow follow``
(``marketflow_assets/defs/indicators/follow.py``),
which executes the same job in process within a second of a new file, without these sensor and
run-launch hops. While the follower has run within ``LIVE_GRACE_S`` this sensor leaves data of
the last ``LIVE_HORIZON_HOURS`` to it and only launches runs for older (late) data; when the
follower stops, this sensor takes over by itself.

Why a custom sensor and not declarative automation (``AutomationCondition``): ``docs/DECISIONS.md``;
``recent_indicators_schedule`` covers what it cannot see (sensor stopped).
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from marketflow_assets.defs.common.cursors import materializations_since_cursor, storage_id_cursor
from marketflow_assets.defs.common.launch import LIVE_TRIGGER_TAG
from marketflow_assets.defs.common.partitions import HOURLY, floor_hour
from marketflow_assets.defs.common.runs import in_flight_runs
from marketflow_assets.defs.indicators.jobs import (
    partition_key_for,
    partition_range_tags,
    refresh_indicators_job,
)
from marketflow_assets.defs.raw_prices.assets import RAW_PRICES_KEY

#: Longest range one automatic run covers; older late data is left to backfills / the schedule.
MAX_AUTOMATIC_PARTITIONS = 48
#: The follower handles new raw files whose rows lie within this many hours of now ...
LIVE_HORIZON_HOURS = 2
#: ... and counts as alive while its latest run is at most this old; meanwhile this sensor
#: leaves such data to it (older data, or a silent follower: this sensor launches as before).
LIVE_GRACE_S = 90.0


def _ts(metadata, key: str) -> datetime | None:
    value = metadata.get(key)
    if value is None:
        return None
    return datetime.fromtimestamp(float(value.value), tz=UTC)


def partition_range(
    oldest: datetime, newest: datetime, partitions_def=HOURLY
) -> tuple[str, str] | None:
    """First and last hourly partition key for new rows in ``[oldest, newest]`` (capped)."""
    first_allowed = partitions_def.start
    last_allowed = partitions_def.get_last_partition_window()
    if last_allowed is None:
        return None
    newest = min(floor_hour(newest), last_allowed.start)
    oldest = max(
        floor_hour(oldest), first_allowed, newest - timedelta(hours=MAX_AUTOMATIC_PARTITIONS - 1)
    )
    if oldest > newest:
        return None
    return partition_key_for(oldest), partition_key_for(newest)


def _age_s(record) -> float:
    return (datetime.now(UTC) - record.update_timestamp.astimezone(UTC)).total_seconds()


def stale_live_run(record) -> bool:
    """A live run not updated for a while: its follower was killed mid-run."""
    return record.dagster_run.tags.get(LIVE_TRIGGER_TAG) == "live" and _age_s(record) > 300


def _live_follower_run(instance) -> str | None:
    """Run id of the live follower's latest run if it is recent (the follower is alive)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=refresh_indicators_job.name, tags={LIVE_TRIGGER_TAG: "live"}
        ),
        limit=1,
    )
    if records and _age_s(records[0]) <= LIVE_GRACE_S:
        return records[0].dagster_run.run_id
    return None


def run_request_for(first_key: str, last_key: str, run_key: str) -> dg.RunRequest:
    if first_key == last_key:
        return dg.RunRequest(run_key=run_key, partition_key=first_key)
    return dg.RunRequest(run_key=run_key, tags=partition_range_tags(first_key, last_key))


@dg.sensor(
    name="indicators_follow_raw_prices",
    description="Materializes the price_indicators/market_movers partitions holding newly "
    "observed raw_prices rows (normally the current hour).",
    job=refresh_indicators_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def indicators_follow_raw_prices(
    context: dg.SensorEvaluationContext,
) -> dg.SensorResult | dg.SkipReason:
    records = materializations_since_cursor(context, RAW_PRICES_KEY)
    if not records:
        return dg.SkipReason("no new raw_prices data since the last run request")
    in_flight = [
        record
        for record in in_flight_runs(context.instance, refresh_indicators_job.name, limit=5)
        if not stale_live_run(record)
    ]
    if in_flight:
        return dg.SkipReason(
            f"run {in_flight[0].dagster_run.run_id} is still in flight; new data will follow it"
        )
    oldest = newest = None
    for record in records:
        metadata = record.asset_materialization.metadata
        lo, hi = _ts(metadata, "oldest_new_ts"), _ts(metadata, "newest_ts")
        if lo is None or hi is None:
            continue
        oldest = lo if oldest is None else min(oldest, lo)
        newest = hi if newest is None else max(newest, hi)
    cursor = storage_id_cursor(records[-1])
    keys = None if oldest is None else partition_range(oldest, newest)
    if keys is None:
        return dg.SensorResult(
            skip_reason="new raw files hold no rows in any partition", cursor=cursor
        )
    follower = _live_follower_run(context.instance)
    if follower is not None and oldest >= datetime.now(UTC) - timedelta(hours=LIVE_HORIZON_HOURS):
        return dg.SensorResult(
            skip_reason=f"the live follower (marketflow follow) refreshes {keys[0]} .. {keys[1]} "
            f"itself (latest run {follower})",
            cursor=cursor,
        )
    context.log.info(f"new raw data {oldest} .. {newest}: partitions {keys[0]} .. {keys[1]}")
    return dg.SensorResult(
        run_requests=[run_request_for(*keys, run_key=f"raw_prices-{records[-1].storage_id}")],
        cursor=cursor,
    )
