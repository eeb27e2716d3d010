"""``marketflow refresh [--start ISO] [--end ISO]``: materialize the indicator tables via Dagster.

Materializes ``price_indicators`` and ``market_movers`` partition by partition, in time order (each
partition continues from the state its predecessor stored), for the hours covered by the raw data
(all of it by default), printing one progress line per partition. Runs are recorded on the
Dagster instance of ``$DAGSTER_HOME`` when set (so the UI shows them), else on an ephemeral one.
One Spark session serves every run. Writes are idempotent: a second refresh changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, datetime, timedelta

from marketflow_assets.settings import ConfigError, Settings, floor_hour, parse_utc, redact_url

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--start",
        help="an ISO-8601 time (UTC if no offset); refresh from the hour containing it "
        "(default: the oldest raw data)",
    )
    parser.add_argument(
        "--end",
        help="an ISO-8601 time, exclusive (default: just after the newest raw data)",
    )
    parser.add_argument(
        "--partitions-per-run",
        type=int,
        default=1,
        metavar="N",
        help="hourly partitions computed per Dagster run; larger values are faster for long "
        "backfills (default: 1, one run and one progress line per partition)",
    )


def _ceil_hour(value: datetime) -> datetime:
    floored = floor_hour(value)
    return floored if floored == value else floored + HOUR


def plan(raw_dir, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime] | None:
    """Hour-aligned ``[first, last)`` to refresh, or None when there is nothing to do."""
    from marketflow_assets.raw_dataset import raw_time_range

    if start is None or end is None:
        bounds = raw_time_range(raw_dir)
        if bounds is None:
            return None
        start = start or bounds[0]
        end = end or bounds[1] + timedelta(microseconds=1)
    first, last = floor_hour(start), _ceil_hour(end)
    return (first, last) if first < last else None


def failure_message(result) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None and error.message.startswith("dagster."):
                error = error.cause
            return f"{event.step_key}: {error.message.strip().splitlines()[0]}"
    return "run failed"


def run(args: argparse.Namespace, settings: Settings) -> int:
    import dagster as dg

    from marketflow_assets.defs.common.launch import CLI, LAUNCHED_BY_TAG
    from marketflow_assets.defs.common.partitions import (
        PARTITION_FMT,
        default_partition_start,
        hourly_partitions,
    )
    from marketflow_assets.defs.indicators.assets import build_price_indicators
    from marketflow_assets.defs.indicators.jobs import partition_range_tags
    from marketflow_assets.defs.indicators.movers import build_market_movers
    from marketflow_assets.defs.raw_prices.assets import raw_prices
    from marketflow_assets.resources import build_resources, without_secrets_in_config

    if not settings.postgres_url:
        raise ConfigError("MARKETFLOW_POSTGRES_URL is not set (refresh needs PostgreSQL)")
    per_run = getattr(args, "partitions_per_run", 1) or 1
    if per_run < 1:
        raise ConfigError("--partitions-per-run must be at least 1")
    start = parse_utc(args.start, "--start") if getattr(args, "start", None) else None
    end = parse_utc(args.end, "--end") if getattr(args, "end", None) else None
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"--start {args.start} is not before --end {args.end}")

    window = plan(settings.raw_dir, start, end)
    if window is None:
        print(
            f"refresh: no raw data under {settings.raw_dir} in the requested range; nothing to do"
        )
        return 0
    first, last = window
    # Partitions must cover the data even if it predates MARKETFLOW_PARTITION_START or lies
    # in the future (the code location's own definition covers up to the current hour).
    partition_start = min(default_partition_start(settings), first)
    now_hour = floor_hour(datetime.now(UTC))
    partitions_def = hourly_partitions(
        partition_start, end=last if last > now_hour + HOUR else None
    )
    assets = [
        raw_prices,
        build_price_indicators(partitions_def),
        build_market_movers(partitions_def),
    ]
    keys = partitions_def.get_partition_keys_in_range(
        dg.PartitionKeyRange(first.strftime(PARTITION_FMT), (last - HOUR).strftime(PARTITION_FMT))
    )
    chunks = [keys[i : i + per_run] for i in range(0, len(keys), per_run)]
    instance = dg.DagsterInstance.get() if settings.dagster_home else dg.DagsterInstance.ephemeral()
    # no password in the job snapshot Dagster stores in $DAGSTER_HOME
    resources = without_secrets_in_config(
        build_resources(settings.postgres_url, str(settings.data_dir))
    )
    print(
        f"refresh: {len(keys)} hourly partition(s) {keys[0]} .. {keys[-1]} "
        f"from {settings.raw_dir} into {redact_url(settings.postgres_url)}",
        flush=True,
    )
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    logging.getLogger("alembic").setLevel(logging.WARNING)  # instance storage migrations
    had_spark = _active_spark() is not None
    started = time.perf_counter()
    total_rows = total_movers = done = 0
    try:
        for chunk in chunks:
            t0 = time.perf_counter()
            single = len(chunk) == 1
            result = dg.materialize(
                assets,
                selection=["price_indicators", "market_movers"],
                partition_key=chunk[0] if single else None,
                tags={
                    LAUNCHED_BY_TAG: CLI,
                    **({} if single else partition_range_tags(chunk[0], chunk[-1])),
                },
                resources=resources,
                instance=instance,
                run_config=quiet,
                raise_on_error=False,
            )
            label = chunk[0] if single else f"{chunk[0]} .. {chunk[-1]}"
            if not result.success:
                print(f"refresh: FAILED at {label}: {failure_message(result)}", file=sys.stderr)
                return 1
            rows = _metadata_value(result, "price_indicators", "rows")
            coins = _metadata_value(result, "price_indicators", "coins")
            movers = _metadata_value(result, "market_movers", "rows")
            engine = _engine(result)
            total_rows += rows
            total_movers += movers
            done += len(chunk)
            print(
                f"[{done}/{len(keys)}] {label}: {rows} indicator rows ({coins} coins, {engine}), "
                f"{movers} mover rows, {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
    finally:
        if not had_spark:
            _stop_spark()
    print(
        f"refresh: done, {len(keys)} partition(s), {total_rows} indicator rows, "
        f"{total_movers} mover rows in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    return 0


def _metadata_value(result, node: str, key: str) -> int:
    events = result.asset_materializations_for_node(node)
    if not events or key not in events[0].metadata:
        return 0
    return int(events[0].metadata[key].value)


def _engine(result) -> str:
    """Where ``price_indicators`` was computed: ``local`` or ``spark`` (``none`` without input)."""
    events = result.asset_materializations_for_node("price_indicators")
    engine = events[0].metadata.get("engine") if events else None
    return str(engine.value) if engine is not None else "none"


def _active_spark():
    """The active Spark session of this thread: a Spark Connect client or a local driver."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return None
    from marketflow_assets.settings import load_settings

    if load_settings().spark_remote:
        try:
            from pyspark.sql.connect.session import SparkSession as RemoteSparkSession
        except ImportError:  # connect extras missing: the resource would have failed anyway
            return None
        return RemoteSparkSession.getActiveSession()
    return SparkSession.getActiveSession()


def _stop_spark() -> None:
    session = _active_spark()
    if session is not None:
        session.stop()
