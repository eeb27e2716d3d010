"""compare_indicator_rows / step_indicators (pure), and the Dagster side of the live path: the
price_indicators refresh compares the live rows it replaces (metadata), Dagster's values win,
and the asset check price_indicators_live_matches fails on a difference, naming coin and ts."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from marketflow_assets import indicators as ind
from marketflow_assets.definitions import build_resources
from marketflow_assets.defs.indicators.assets import price_indicators
from marketflow_assets.defs.indicators.checks import price_indicators_live_matches
from marketflow_assets.defs.indicators.movers import market_movers
from marketflow_assets.defs.raw_prices.assets import raw_prices
from marketflow_assets.live.store import LiveStore
from marketflow_assets_tests.helpers import (
    assert_indicators_match_reference,
    assert_movers_match_reference,
    irregular_rows,
    partition_keys,
    read_table,
    write_raw_parquet,
)
from marketflow_assets_tests.live.live_helpers import query

T0 = pd.Timestamp("2026-03-01T00:00:00Z")


def frame(values: dict, n: int = 3) -> pd.DataFrame:
    base = {
        "coin_id": ["a", "b", "c"][:n],
        "symbol": ["A", "B", "C"][:n],
        "ts": [T0 + pd.Timedelta(seconds=30 * i) for i in range(n)],
        "price": [1.0, 2.0, 3.0][:n],
        "change_1min": [np.nan, 0.5, -0.25][:n],
        "change_5min": [np.nan, np.nan, 1.0][:n],
        "sma_5min": [1.0, 2.0, 3.0][:n],
        "ema_3min": [1.0, 2.0, 3.0][:n],
        "volatility_5min": [np.nan, 0.0, 0.1][:n],
    }
    base.update(values)
    return pd.DataFrame(base)


def test_compare_equal_rows_and_rounding_pass():
    live = frame({})
    dagster = frame({"ema_3min": [1.0, 2.0 * (1 + 4e-16), 3.0]})
    diffs = ind.compare_indicator_rows(live, dagster)
    assert diffs.empty
    assert diffs.attrs["compared"] == 3
    assert 0 < diffs.attrs["max_diff"] < 1e-15


def test_compare_reports_relative_differences_nulls_and_only_common_keys():
    live = frame({"sma_5min": [1.0, 2.0 * (1 + 1e-6), 3.0], "change_5min": [np.nan, 1.0, 1.0]})
    dagster = frame({}).iloc[1:]  # 'a' was not recomputed: not a difference
    diffs = ind.compare_indicator_rows(live, dagster)
    assert diffs.attrs["compared"] == 2
    assert list(diffs["coin_id"]) == ["b"]  # NULL vs 1.0 is inf: the worst column is change_5min
    assert diffs.loc[0, "column"] == "change_5min" and math.isinf(diffs.loc[0, "diff"])
    only_sma = ind.compare_indicator_rows(
        frame({"sma_5min": [1.0, 2.0 * (1 + 1e-6), 3.0]}), dagster
    )
    assert list(only_sma["column"]) == ["sma_5min"]
    assert only_sma.loc[0, "diff"] == pytest.approx(1e-6, rel=1e-5)
    assert only_sma.loc[0, "ts"] == T0 + pd.Timedelta(seconds=30)
    assert ind.compare_indicator_rows(live, dagster, tol=1.0).empty is False  # inf > any tol
    assert ind.compare_indicator_rows(live.iloc[:0], dagster).attrs["compared"] == 0


def test_step_indicators_one_observation_at_a_time_equals_full_recompute():
    rows = sorted(irregular_rows(seed=2, coins=3, polls=50), key=lambda r: (r[2], r[0]))
    state = ind.LiveState.empty()
    out = []
    for coin, symbol, ts, price in rows:
        row, state = ind.step_indicators(state, coin, ts, price, symbol)
        assert row is not None
        out.append(row)
        again, same = ind.step_indicators(state, coin, ts, price * 2, symbol)  # duplicate
        assert again is None and same is state
    table = pd.DataFrame(out)
    assert_indicators_match_reference(table, rows)
    raw = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
    assert ind.compare_indicator_rows(table, ind.compute_indicators(raw)).empty
    # what is kept per coin is bounded (5 minutes + one reference), not the history
    assert len(state.obs) < len(rows) / 2


def write_live(url: str, rows: list[tuple]) -> None:
    """The live path's write (LiveStore.write_batch) of ``rows``, poll by poll."""
    store = LiveStore(url)
    state = ind.LiveState.empty()
    try:
        raw = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
        raw["ts"] = pd.to_datetime(raw["ts"], utc=True)
        for _, poll in raw.groupby("ts", sort=True):
            computed, state, _ = ind.advance_indicators(state, poll)
            store.write_batch("t", computed, {0: 1})
    finally:
        store.close()


def materialize(resources, instance, key):
    return dg.materialize(
        [raw_prices, price_indicators, market_movers, price_indicators_live_matches],
        selection=dg.AssetSelection.assets("price_indicators", "market_movers")
        | dg.AssetSelection.checks(price_indicators_live_matches),
        partition_key=key,
        resources=resources,
        instance=instance,
    )


def test_dagster_compares_live_rows_before_replacing_them_and_the_check_reports(pg_clean, data_dir):
    rows = irregular_rows(seed=6, coins=5, polls=40)
    write_live(pg_clean, rows)
    assert query(pg_clean, "SELECT DISTINCT source FROM price_indicators") == [("live",)]
    # one live row goes wrong (e.g. a live-path bug): the comparison must catch it
    bad_coin, _, bad_ts, _ = sorted(rows, key=lambda r: r[2])[len(rows) // 2]
    query_update = (
        "UPDATE price_indicators SET sma_5min = sma_5min * (1 + 1e-6) "
        "WHERE coin_id = %s AND ts = %s"
    )
    import psycopg2

    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute(query_update, (bad_coin, bad_ts))
        assert cur.rowcount == 1
    write_raw_parquet(data_dir / "raw_prices", rows)
    resources = build_resources(pg_clean, str(data_dir))
    instance = dg.DagsterInstance.ephemeral()
    keys = partition_keys(price_indicators, min(r[2] for r in rows), max(r[2] for r in rows))
    evaluations, compared, differing = [], 0, 0
    for key in keys:
        result = materialize(resources, instance, key)
        assert result.success
        meta = result.asset_materializations_for_node("price_indicators")[0].metadata
        compared += meta["live_rows_compared"].value
        differing += meta["live_rows_differing"].value
        evaluations.extend(result.get_asset_check_evaluations())
    assert compared == len(rows) and differing == 1
    failed = [e for e in evaluations if not e.passed]
    assert len(failed) == 1 and failed[0].check_name == "price_indicators_live_matches"
    assert bad_coin in failed[0].metadata["differences"].value
    assert pd.Timestamp(bad_ts).isoformat() in failed[0].metadata["differences"].value
    # Dagster's values won: every row is Dagster's now, and right
    assert query(pg_clean, "SELECT DISTINCT source FROM price_indicators") == [("dagster",)]
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), rows)
    assert_movers_match_reference(read_table(pg_clean, "market_movers"), rows)
    # the next comparison that finds only equal live rows passes again
    more = [(c, s, t + pd.Timedelta(hours=3), p) for c, s, t, p in rows[-3:]]
    write_live_more = sorted(rows + more, key=lambda r: r[2])
    write_live(pg_clean, write_live_more)  # only rows newer than the table are computed
    write_raw_parquet(data_dir / "raw_prices", more, name="part-00001.parquet")
    key = partition_keys(price_indicators, more[0][2], more[0][2])[0]
    result = materialize(resources, instance, key)
    meta = result.asset_materializations_for_node("price_indicators")[0].metadata
    assert meta["live_rows_differing"].value == 0
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed, evaluation.description


def test_dagster_keeps_live_rows_ahead_of_the_raw_data(pg_clean, data_dir):
    rows = sorted(irregular_rows(seed=8, coins=4, polls=30), key=lambda r: r[2])
    newest = max(r[2] for r in rows)
    write_live(pg_clean, rows)
    known = [r for r in rows if r[2] < newest]  # Spark has not written the newest poll yet
    write_raw_parquet(data_dir / "raw_prices", known)
    resources = build_resources(pg_clean, str(data_dir))
    instance = dg.DagsterInstance.ephemeral()
    for key in partition_keys(price_indicators, rows[0][2], newest):
        assert materialize(resources, instance, key).success
    sources = dict(
        query(
            pg_clean,
            "SELECT ts = %s, array_agg(DISTINCT source) FROM price_indicators GROUP BY 1",
            (newest,),
        )
    )
    assert sources == {True: ["live"], False: ["dagster"]}
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), rows)


def test_dagster_keeps_each_coins_live_rows_ahead_of_its_raw_data(pg_clean, data_dir):
    """A Spark micro-batch can hold part of a poll: the coins whose newest record is not in raw
    Parquet yet keep their live row, even when other coins' raw data reaches a later ts."""
    rows = sorted(irregular_rows(seed=9, coins=4, polls=30), key=lambda r: r[2])
    write_live(pg_clean, rows)
    coins = sorted({r[0] for r in rows})
    lagging = set(coins[:2])
    newest = {c: max(r[2] for r in rows if r[0] == c) for c in coins}
    missing = {(c, newest[c]) for c in lagging}
    known = [r for r in rows if (r[0], r[2]) not in missing]
    write_raw_parquet(data_dir / "raw_prices", known)
    resources = build_resources(pg_clean, str(data_dir))
    instance = dg.DagsterInstance.ephemeral()
    for key in partition_keys(price_indicators, rows[0][2], max(newest.values())):
        assert materialize(resources, instance, key).success
    live = set(query(pg_clean, "SELECT coin_id, ts FROM price_indicators WHERE source = 'live'"))
    assert {(c, pd.Timestamp(t)) for c, t in live} == {(c, pd.Timestamp(t)) for c, t in missing}
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), rows)
