"""Automation of the indicator assets: the custom sensor vs ``AutomationCondition.eager()``.

``python -m benchmarks.automation`` (not part of ``make bench``: it starts no service and takes a
few seconds). On one ephemeral Dagster instance, with ``price_indicators`` / ``market_movers``
given ``AutomationCondition.eager()`` in a copy of the definitions, it reports runless
``raw_prices`` materializations the way ``raw_prices_observation_sensor`` does and asks both
mechanisms what they would run:

1. *new rows in the current hour* (the normal case, previous hour already materialized);
2. *late rows of the previous hour* (a poll at hh:59:50 whose Parquet lands after hh+1:00);
3. *current-hour rows when the previous hour was never materialized* (first hour after a gap).

For each it prints the requested partitions and the evaluation time of one tick of each
mechanism (side by side, same process), and the tick intervals the two run at.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dagster as dg


def _assets(start: datetime):
    from marketflow_assets.defs.common.partitions import hourly_partitions
    from marketflow_assets.defs.indicators.assets import build_price_indicators
    from marketflow_assets.defs.indicators.movers import build_market_movers
    from marketflow_assets.defs.raw_prices.assets import raw_prices

    partitions = hourly_partitions(start)
    eager = dg.AutomationCondition.eager()
    indicators = build_price_indicators(partitions).with_attributes(automation_condition=eager)
    movers = build_market_movers(partitions).with_attributes(automation_condition=eager)
    return [raw_prices, indicators, movers], partitions


def _report_raw(instance, oldest: datetime, newest: datetime) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="raw_prices",
            metadata={
                "oldest_new_ts": dg.MetadataValue.timestamp(oldest),
                "newest_ts": dg.MetadataValue.timestamp(newest),
            },
        )
    )


def _report_done(instance, asset: str, key: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=key))


def scenario(name: str, rows_at: datetime, previous_done: bool, now: datetime) -> None:
    from marketflow_assets.defs.indicators.jobs import partition_key_for
    from marketflow_assets.defs.indicators.sensors import indicators_follow_raw_prices

    hour = now.replace(minute=0, second=0, microsecond=0)
    assets, _ = _assets(hour - timedelta(hours=6))
    from marketflow_assets.definitions import build_resources

    defs = dg.Definitions(assets=assets, resources=build_resources())  # never used: no run
    with dg.DagsterInstance.ephemeral() as instance:
        # state before the new data: everything up to two hours ago is materialized
        for back in range(6, 1, -1):
            key = partition_key_for(hour - timedelta(hours=back))
            _report_done(instance, "price_indicators", key)
            _report_done(instance, "market_movers", key)
        if previous_done:
            for asset in ("price_indicators", "market_movers"):
                _report_done(instance, asset, partition_key_for(hour - timedelta(hours=1)))
        _report_raw(instance, hour - timedelta(hours=2), hour - timedelta(hours=1, minutes=30))
        first = dg.evaluate_automation_conditions(defs, instance, evaluation_time=now)
        # the sensor has seen the old event too
        cursor = indicators_follow_raw_prices(dg.build_sensor_context(instance=instance)).cursor

        _report_raw(instance, rows_at, rows_at)
        t0 = time.perf_counter()
        result = dg.evaluate_automation_conditions(
            defs, instance, evaluation_time=now, cursor=first.cursor
        )
        eager_ms = (time.perf_counter() - t0) * 1000
        eager_keys = sorted(
            result.get_requested_partitions(dg.AssetKey("price_indicators")) - {None}
        )
        t0 = time.perf_counter()
        tick = indicators_follow_raw_prices(
            dg.build_sensor_context(instance=instance, cursor=cursor)
        )
        sensor_ms = (time.perf_counter() - t0) * 1000
        sensor_keys = []
        for request in getattr(tick, "run_requests", None) or []:
            if request.partition_key:
                sensor_keys.append(request.partition_key)
            else:
                tags = request.tags
                sensor_keys.append(
                    f"{tags['dagster/asset_partition_range_start']}.."
                    f"{tags['dagster/asset_partition_range_end']}"
                )
    print(f"{name}: new rows at {rows_at:%H:%M:%S}, evaluated at {now:%H:%M:%S}")
    print(f"  custom sensor      requests {sensor_keys or 'nothing'}  ({sensor_ms:.1f} ms)")
    print(f"  AutomationCondition.eager() requests {eager_keys or 'nothing'}  ({eager_ms:.1f} ms)")


def main() -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    from marketflow_assets.defs.indicators.sensors import indicators_follow_raw_prices

    default_sensor = dg.AutomationConditionSensorDefinition(
        "default_automation_condition_sensor", target=dg.AssetSelection.all()
    )
    print(
        f"tick interval: custom sensor {indicators_follow_raw_prices.minimum_interval_seconds} s,"
        f" automation condition sensor {default_sensor.minimum_interval_seconds} s (default)"
    )
    now = datetime.now(UTC).replace(minute=0, second=20, microsecond=0)
    hour = now.replace(second=0)
    scenario("1. current hour", now - timedelta(seconds=10), True, now)
    scenario("2. late rows of the previous hour", hour - timedelta(seconds=10), True, now)
    scenario("3. previous hour never materialized", now - timedelta(seconds=10), False, now)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
