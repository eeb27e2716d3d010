"""price_indicators / market_movers through Dagster, real Parquet, local Spark and real Postgres.

The expected values come from the independent plain-Python reference in helpers.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from marketflow_assets.defs.common.launch import AUTOMATION, LAUNCHED_BY_TAG, launcher
from marketflow_assets.defs.indicators.assets import price_indicators
from marketflow_assets.defs.indicators.jobs import partition_range_tags
from marketflow_assets.defs.indicators.movers import market_movers
from marketflow_assets.defs.raw_prices.assets import raw_prices
from marketflow_assets.resources import SparkResource
from marketflow_assets_tests.helpers import (
    VALUE_COLUMNS,
    assert_indicators_match_reference,
    assert_movers_match_reference,
    irregular_rows,
    partition_keys,
    read_table,
    write_raw_parquet,
)

ASSETS = [raw_prices, price_indicators, market_movers]
SELECTION = ["price_indicators", "market_movers"]


def materialize(resources, instance, key=None, key_range=None, launched_by=AUTOMATION):
    """A run as the sensors launch it (``launched_by=None``: by hand, as from the UI)."""
    tags = partition_range_tags(*key_range) if key_range else {}
    if launched_by:
        tags[LAUNCHED_BY_TAG] = launched_by
    result = dg.materialize(
        ASSETS,
        selection=SELECTION,
        partition_key=key,
        tags=tags,
        resources=resources,
        instance=instance,
    )
    assert result.success
    return result


def on_spark(resources: dict) -> dict:
    """``resources`` with every computation on Spark (``local_max_rows=0``)."""
    spark = SparkResource(spark_config=resources["pyspark"].spark_config, local_max_rows=0)
    return {**resources, "pyspark": spark}


def engines(result) -> dict[str, str]:
    return {
        node: result.asset_materializations_for_node(node)[0].metadata["engine"].value
        for node in SELECTION
    }


def sorted_table(url: str, table: str) -> pd.DataFrame:
    frame = read_table(url, table)
    key = ["coin_id", "ts"] if table == "price_indicators" else ["snapshot_ts", "direction", "rank"]
    return frame.sort_values(key).reset_index(drop=True)


def test_partitions_in_order_match_reference_equal_full_recompute_and_are_idempotent(
    asset_resources, raw_dir, pg_clean
):
    rows = irregular_rows(seed=1, coins=8, polls=70)  # 22:50 -> 01:02, crosses midnight
    write_raw_parquet(raw_dir, rows)
    first, last = min(r[2] for r in rows), max(r[2] for r in rows)
    keys = partition_keys(price_indicators, first, last)
    assert len(keys) == 4
    instance = dg.DagsterInstance.ephemeral()

    # incremental: one run per partition, in time order, each continuing from stored state
    for key in keys:
        result = materialize(asset_resources, instance, key=key)
    meta = result.asset_materializations_for_node("price_indicators")[0].metadata
    assert meta["rows"].value == sum(
        1 for r in rows if r[2] >= datetime(2024, 3, 10, 1, tzinfo=UTC)
    )
    assert (
        "latest_top_movers" in result.asset_materializations_for_node("market_movers")[0].metadata
    )
    incremental = sorted_table(pg_clean, "price_indicators")
    incremental_movers = sorted_table(pg_clean, "market_movers")
    assert_indicators_match_reference(incremental, rows)
    assert_movers_match_reference(incremental_movers, rows)

    assert engines(result) == {"price_indicators": "local", "market_movers": "local"}

    # full recompute: empty tables, one run over the whole range (no stored state at all), on
    # Spark this time (the small hourly runs above computed in process): same rows
    import psycopg2

    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE price_indicators, market_movers")
    result = materialize(on_spark(asset_resources), instance, key_range=(keys[0], keys[-1]))
    assert engines(result) == {"price_indicators": "spark", "market_movers": "spark"}
    full = sorted_table(pg_clean, "price_indicators")
    pd.testing.assert_frame_equal(
        full[["coin_id", "symbol", "ts"]], incremental[["coin_id", "symbol", "ts"]]
    )
    for col in VALUE_COLUMNS:
        np.testing.assert_allclose(full[col], incremental[col], rtol=1e-9, atol=0, equal_nan=True)
    pd.testing.assert_frame_equal(
        sorted_table(pg_clean, "market_movers").drop(columns="change_5min"),
        incremental_movers.drop(columns="change_5min"),
    )
    assert_movers_match_reference(sorted_table(pg_clean, "market_movers"), rows)

    # idempotent: re-materializing a middle partition changes nothing, duplicates nothing
    before = sorted_table(pg_clean, "price_indicators")
    before_movers = sorted_table(pg_clean, "market_movers")
    materialize(asset_resources, instance, key=keys[1])
    pd.testing.assert_frame_equal(sorted_table(pg_clean, "price_indicators"), before)
    pd.testing.assert_frame_equal(sorted_table(pg_clean, "market_movers"), before_movers)


def test_late_rows_in_newest_partition_are_picked_up(asset_resources, raw_dir, pg_clean):
    """Streaming: the newest partition is recomputed as files arrive; result equals reference."""
    rows = irregular_rows(seed=4, coins=5, polls=40)
    cut = min(r[2] for r in rows) + timedelta(minutes=30)
    early = [r for r in rows if r[2] < cut]
    late = [r for r in rows if r[2] >= cut]
    write_raw_parquet(raw_dir, early, name="part-a.parquet")
    keys = partition_keys(price_indicators, min(r[2] for r in rows), max(r[2] for r in rows))
    instance = dg.DagsterInstance.ephemeral()
    for key in keys:
        materialize(asset_resources, instance, key=key)
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), early)
    write_raw_parquet(raw_dir, late, name="part-b.parquet")
    late_keys = partition_keys(price_indicators, cut, max(r[2] for r in rows))
    materialize(asset_resources, instance, key_range=(late_keys[0], late_keys[-1]))
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), rows)
    assert_movers_match_reference(read_table(pg_clean, "market_movers"), rows)


def test_partition_without_raw_data_is_empty(asset_resources, pg_clean):
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(asset_resources, instance, key="2024-01-01-00:00")
    assert result.asset_materializations_for_node("price_indicators")[0].metadata["rows"].value == 0
    assert read_table(pg_clean, "price_indicators").empty


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_files_from_other_writers_with_nanosecond_timestamps(
    asset_resources, raw_dir, pg_clean, engine
):
    """A plain Parquet directory from another writer (pandas: TIMESTAMP(NANOS), which Spark
    rejects) is converted into the table on first use and computed like any other data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = irregular_rows(seed=6, coins=4, polls=25)
    frame = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ns, UTC]")
    for day, group in frame.groupby(frame["ts"].dt.date):
        folder = raw_dir / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(group.assign(name=group["id"]), preserve_index=False)
        assert table.schema.field("ts").type == pa.timestamp("ns", tz="UTC")
        pq.write_table(table, folder / "from-pandas.parquet")
    keys = partition_keys(price_indicators, min(r[2] for r in rows), max(r[2] for r in rows))
    resources = asset_resources if engine == "local" else on_spark(asset_resources)
    result = materialize(resources, dg.DagsterInstance.ephemeral(), key_range=(keys[0], keys[-1]))
    assert engines(result)["price_indicators"] == engine
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), rows)


# --------------------------------------------------------------------------------------------
# Incremental refresh within the hour (ledger of folded raw files; assets/incremental.py)
# --------------------------------------------------------------------------------------------
def _micros(ts) -> int:
    return int(pd.Timestamp(ts).value // 1000)


def write_poll_file(raw_dir, rows, batch: int) -> list:
    """Rows as one file named like the streaming job's (min/max ts in the name)."""
    lo, hi = min(r[2] for r in rows), max(r[2] for r in rows)
    name = f"part-0f17a-b{batch}-000-{_micros(lo)}-{_micros(hi)}.parquet"
    return write_raw_parquet(raw_dir, rows, name=name)


def follow(resources, raw_dir, new_rows, batch):
    """What the live path does for one new file: refresh the hours from its oldest row's hour
    to its newest (direct calls of the assets' functions; the same code as the asset bodies)."""
    from marketflow_assets.defs.indicators.assets import refresh_indicators_incremental
    from marketflow_assets.defs.indicators.movers import refresh_movers_incremental

    write_poll_file(raw_dir, new_rows, batch)
    first = min(r[2] for r in new_rows).replace(minute=0, second=0, microsecond=0)
    last = max(r[2] for r in new_rows).replace(minute=0, second=0, microsecond=0)
    end = last + timedelta(hours=1)
    postgres, spark = resources["postgres"], resources["pyspark"]
    ind_result = refresh_indicators_incremental(spark.get_session, raw_dir, postgres, first, end)
    mov_result = refresh_movers_incremental(spark.get_session, postgres, first, end)
    return ind_result, mov_result


def test_live_refresh_appends_each_poll_and_late_rows_recompute_what_they_affect(
    asset_resources, raw_dir, pg_clean
):
    rows = irregular_rows(seed=11, coins=6, polls=45)
    rows = [r for r in rows if r[0] not in ("solo", "flat")]
    rng = np.random.default_rng(11)
    middle = sorted(r[2] for r in rows)[len(rows) // 2]
    late = [r for r in rows if r[2] > middle and rng.random() < 0.08]
    polls: dict = {}
    for r in rows:
        if r not in late:
            polls.setdefault(r[2], []).append(r)
    seen: list = []
    plans = []
    for batch, ts in enumerate(sorted(polls)):
        ind_result, mov_result = follow(asset_resources, raw_dir, polls[ts], batch)
        seen += polls[ts]
        plans.append(ind_result.plan)
        hour = ts.replace(minute=0, second=0, microsecond=0)
        if ind_result.plan.startswith(f"{hour:%H:%M:%S}: append"):
            # only the new poll was recomputed and written; movers only for that snapshot
            assert len(ind_result.rows) == len(polls[ts])
            assert ind_result.changed == len(polls[ts])
            assert mov_result.recomputed_from == ts
            assert set(mov_result.rows["snapshot_ts"]) <= {pd.Timestamp(ts)}
    assert sum("append" in p for p in plans) >= len(polls) - 8  # hour starts, gaps: full
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), seen)
    assert_movers_match_reference(read_table(pg_clean, "market_movers"), seen)

    # the same files again: nothing to do, nothing written
    ind_result, mov_result = follow(asset_resources, raw_dir, polls[max(polls)], batch + 100)
    assert "unchanged" not in ind_result.plan  # a new file name: recomputed, identical rows
    assert ind_result.changed == 0

    # late rows (older than what the table holds, across hours): recompute from the oldest on
    ind_result, mov_result = follow(asset_resources, raw_dir, late, batch + 200)
    assert "late" in ind_result.plan or "full" in ind_result.plan
    assert ind_result.recomputed_from == min(r[2] for r in late) or "full" in ind_result.plan
    assert len(ind_result.rows) < len(rows)
    table = sorted_table(pg_clean, "price_indicators")
    assert_indicators_match_reference(table, rows)
    assert_movers_match_reference(read_table(pg_clean, "market_movers"), rows)

    # a compaction (OPTIMIZE) replaces files by one with the same rows: full recompute of the
    # hours whose files the ledger lists are gone, no row changes
    from marketflow_assets import compaction

    assert compaction.compact(raw_dir, retention_hours=1).partitions_optimized >= 1
    _, mov_result = follow(asset_resources, raw_dir, late[:1], batch + 300)
    pd.testing.assert_frame_equal(sorted_table(pg_clean, "price_indicators"), table)

    # equals a full recompute through Dagster on empty tables (no ledger, no stored state)
    import psycopg2

    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE price_indicators, market_movers, indicator_refresh_ledger")
    keys = partition_keys(price_indicators, min(r[2] for r in rows), max(r[2] for r in rows))
    result = materialize(
        asset_resources, dg.DagsterInstance.ephemeral(), key_range=(keys[0], keys[-1])
    )
    assert "full: first refresh" in (
        result.asset_materializations_for_node("price_indicators")[0]
        .metadata["incremental_plan"]
        .value
    )
    full = sorted_table(pg_clean, "price_indicators")
    pd.testing.assert_frame_equal(
        full[["coin_id", "symbol", "ts"]], table[["coin_id", "symbol", "ts"]]
    )
    for col in VALUE_COLUMNS:
        np.testing.assert_allclose(full[col], table[col], rtol=1e-9, atol=0, equal_nan=True)
    # and a second materialization changes nothing
    result = materialize(asset_resources, dg.DagsterInstance.ephemeral(), key=keys[-1])
    meta = result.asset_materializations_for_node("price_indicators")[0].metadata
    assert meta["rows_changed"].value == 0 and "unchanged" in meta["incremental_plan"].value


def test_a_run_launched_by_hand_recomputes_and_every_run_says_who_launched_it(
    asset_resources, raw_dir, pg_clean
):
    """Issue 28: "Materialize" in the Dagster UI recomputes the partition (it used to write 0
    rows: "unchanged: no new raw file"), and every run carries marketflow/launched_by."""
    rows = irregular_rows(seed=4, coins=4, polls=20)
    write_raw_parquet(raw_dir, rows)
    key = partition_keys(price_indicators, min(r[2] for r in rows), max(r[2] for r in rows))[0]
    instance = dg.DagsterInstance.ephemeral()
    materialize(asset_resources, instance, key=key)
    again = materialize(asset_resources, instance, key=key)

    def plan(result, node="price_indicators"):
        return result.asset_materializations_for_node(node)[0].metadata["incremental_plan"].value

    assert "unchanged" in plan(again)
    stored = sorted_table(pg_clean, "price_indicators")
    by_hand = materialize(asset_resources, instance, key=key, launched_by=None)
    assert "full: launched by hand" in plan(by_hand)
    assert "full: launched by hand" in plan(by_hand, "market_movers")
    meta = by_hand.asset_materializations_for_node("price_indicators")[0].metadata
    assert meta["rows_changed"].value == 0  # recomputed: the same rows
    pd.testing.assert_frame_equal(sorted_table(pg_clean, "price_indicators"), stored)
    tags = {r.run_id: r.tags for r in instance.get_runs()}
    assert tags[by_hand.run_id][LAUNCHED_BY_TAG] == "ui"
    # the market table's data moved on to the newest snapshot of the partition
    market = read_table(pg_clean, "coin_market").set_index("coin_id")
    newest = stored[stored["ts"] == stored[stored["ts"] < pd.Timestamp(key_end(key))]["ts"].max()]
    assert sorted(market.index) == sorted(newest["coin_id"])
    assert meta["coin_market_rows"].value == len(newest)

    # ... and every poll of the partition is in the volume history
    def keys(frame):
        return sorted(zip(frame["coin_id"], pd.to_datetime(frame["ts"], utc=True), strict=True))

    assert keys(read_table(pg_clean, "coin_market_history")) == keys(stored)
    assert tags[again.run_id][LAUNCHED_BY_TAG] == "automation"


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"marketflow/trigger": "live"}, "follow"),
        ({"dagster/schedule_name": "recent_indicators_schedule"}, "schedule"),
        ({"dagster/sensor_name": "reconciliation_sensor"}, "reconciliation"),
        ({"dagster/sensor_name": "indicators_follow_raw_prices"}, "automation"),
        ({"dagster/backfill": "abc", "dagster/sensor_name": "x"}, "backfill"),
        ({"marketflow/launched_by": "cli"}, "cli"),
        ({}, "ui"),
    ],
)
def test_launcher_of_each_kind_of_run(tags, expected):
    assert launcher(tags) == expected


def key_end(key: str) -> datetime:
    return datetime.strptime(key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC) + timedelta(hours=1)
