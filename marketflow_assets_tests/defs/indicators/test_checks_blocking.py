"""With the real assets (local Spark, real Postgres): the checks run in the materialization run,
check exactly the materialized partition, and a failed blocking check stops market_movers."""

from datetime import UTC, datetime

import dagster as dg

from marketflow_assets.definitions import ASSET_CHECKS, build_resources
from marketflow_assets.defs.indicators import checks as price_indicator_checks
from marketflow_assets.defs.indicators import movers_checks
from marketflow_assets.defs.indicators.assets import price_indicators
from marketflow_assets.defs.indicators.movers import market_movers
from marketflow_assets.defs.raw_prices.assets import raw_prices
from marketflow_assets_tests.defs.checks_data import make_raw, write_raw

ASSETS = [raw_prices, price_indicators, market_movers]
END = datetime(2026, 3, 2, 10, 40, tzinfo=UTC)  # 30 polls from 10:25:30 to 10:40
PARTITION = "2026-03-02-10:00"


def _materialize(pg_clean, data_dir):
    return dg.materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=dg.AssetSelection.assets("price_indicators", "market_movers"),
        partition_key=PARTITION,
        resources=build_resources(pg_clean, str(data_dir)),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_good_partition_passes_every_check_and_writes_movers(spark, pg_clean, data_dir):
    write_raw(data_dir, make_raw(END, polls=30, coins=12))
    result = _materialize(pg_clean, data_dir)
    assert result.success
    evaluations = {
        e.asset_check_key.to_user_string(): e for e in result.get_asset_check_evaluations()
    }
    # the checks of both assets ran in the run (not the freshness ones: they are not partitioned
    # data checks, the monitoring sensor evaluates them)
    expected = {f"price_indicators:{c.check_key.name}" for c in price_indicator_checks.CHECKS} | {
        f"market_movers:{c.check_key.name}" for c in movers_checks.CHECKS
    }
    assert expected <= set(evaluations)
    failed = {k: e.description for k, e in evaluations.items() if k in expected and not e.passed}
    assert failed == {}
    sma = evaluations["price_indicators:sma_within_window_range"]
    assert sma.metadata["window_source"].text == "partition"
    assert sma.metadata["rows"].value == 12 * 30
    assert result.asset_materializations_for_node("market_movers")


def test_bad_price_blocks_market_movers(spark, pg_clean, data_dir):
    raw = make_raw(END, polls=30, coins=12)
    raw.loc[raw.index[-3], "current_price"] = -2.0  # slipped past ingest validation
    write_raw(data_dir, raw)
    result = _materialize(pg_clean, data_dir)
    assert not result.success
    evaluation = next(
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_check_key.to_user_string() == "price_indicators:prices_positive"
    )
    assert not evaluation.passed and evaluation.metadata["bad_rows"].value == 1
    assert result.asset_materializations_for_node("price_indicators")
    assert not result.asset_materializations_for_node("market_movers")  # blocked


def test_checks_of_an_empty_partition_are_skipped_not_passed(spark, pg_clean, data_dir):
    """A partition without raw rows: the run succeeds, its quality checks yield no result, so
    Dagster records them as SKIPPED (the UI's "Skipped"), and the Pipeline page's history
    records them as skipped."""
    import asyncio
    import json

    import psycopg2
    from dagster._core.loader import LoadingContextForTest  # Dagster's own status resolution

    from marketflow_assets.defs.monitoring.alerts import latest_check_records, run_skipped_at
    from marketflow_assets.defs.monitoring.history import SKIPPED_IN_RUN, record_latest_checks

    write_raw(data_dir, make_raw(END, polls=30, coins=12))  # data in 10:00, none in 08:00
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=dg.AssetSelection.assets("price_indicators"),
        partition_key="2026-03-02-08:00",
        resources=build_resources(pg_clean, str(data_dir)),
        instance=instance,
    )
    assert result.success
    keys = [c.check_key for c in price_indicator_checks.CHECKS]
    records = latest_check_records(instance, keys)
    loading = LoadingContextForTest(instance)
    statuses = {
        key.name: asyncio.run(record.resolve_status(loading)).value
        for key, record in records.items()
    }
    window_checks = {"prices_positive", "unique_coin_ts", "sma_within_window_range"}
    window_checks.add("volatility_non_negative")
    assert {n: s for n, s in statuses.items() if n in window_checks} == dict.fromkeys(
        window_checks, "SKIPPED"
    ), statuses
    # the checks that are not about the partition's rows still report
    assert {s for n, s in statuses.items() if n not in window_checks} == {"SUCCEEDED"}
    skipped_at = run_skipped_at(instance)
    assert record_latest_checks(pg_clean, records.values(), skipped_at) == len(keys)
    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute("SELECT check_name, passed, description, metadata FROM check_results")
        rows = cur.fetchall()
    conn.close()
    assert {r[0] for r in rows} == {k.name for k in keys}
    for name, passed, description, metadata in rows:
        meta = metadata if isinstance(metadata, dict) else json.loads(metadata)
        skipped = name in window_checks
        assert passed and (description == SKIPPED_IN_RUN) == skipped
        assert bool(meta.get("skipped")) == skipped
