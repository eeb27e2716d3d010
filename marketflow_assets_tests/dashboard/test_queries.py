"""The dashboard's query module against a real seeded PostgreSQL: results equal pandas ground
truth from the seeded frames, every statement is servable from an index, errors are typed."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import psycopg2
import pytest

from marketflow_assets.dashboard import queries as q
from marketflow_assets.dashboard import view
from marketflow_assets_tests.dashboard.dashboard_data import (
    SOLO,
    create_forecast_tables,
    insert_forecasts,
    sql,
)


@pytest.fixture
def db(seeded):
    database = q.Database(seeded[0])
    yield database
    database.close()


def test_latest_snapshot_movers_and_tiles(seeded, db):
    _url, _raw, indicators, movers = seeded
    snapshot = q.latest_snapshot(db)
    assert snapshot == movers["snapshot_ts"].max()
    previous = q.previous_snapshot(db, snapshot)
    assert previous == movers.loc[movers["snapshot_ts"] < snapshot, "snapshot_ts"].max()
    got = q.movers(db, snapshot, previous)
    want = movers[movers["snapshot_ts"] == snapshot].sort_values(["direction", "rank"])
    assert got["coin_id"].to_list() == want["coin_id"].to_list()
    assert got["change_5min"].to_list() == want["change_5min"].to_list()  # exact doubles
    prev = indicators[(indicators["ts"] == previous) & indicators["change_5min"].notna()]
    losers = prev.sort_values(["change_5min", "coin_id"])["coin_id"].to_list()
    for row in got[got["direction"] == "loser"].itertuples():
        assert row.previous_rank == losers.index(row.coin_id) + 1

    coins = q.snapshot_coins(db, snapshot)
    at = indicators[indicators["ts"] == snapshot]
    tiles = view.market_tiles(coins)
    assert tiles.coins == len(at)
    assert tiles.advancers == int((at["change_5min"] > 0).sum())
    assert tiles.decliners == int((at["change_5min"] < 0).sum())


@pytest.mark.parametrize("span", ["15 min", "7 days"])
def test_candles_are_one_minute_ohlc_of_the_30s_prices(seeded, db, span):
    _url, raw, indicators, _movers = seeded
    coin = "coin-05"
    rows = indicators[indicators["coin_id"] == coin].sort_values("ts")
    end = rows["ts"].max()
    start = end - q.RANGES[span]
    got = q.candles(db, coin, start, end)
    window = rows[(rows["ts"] > start) & (rows["ts"] <= end)]
    minute = window["ts"].dt.floor("min")
    at_close = ("sma_5min", "ema_3min", "volatility_5min", "change_1min", "change_5min")
    want = window.groupby(minute).agg(
        open=("price", "first"),
        high=("price", "max"),
        low=("price", "min"),
        close=("price", "last"),
        observations=("price", "size"),
        **{name: (name, lambda x: x.iloc[-1]) for name in at_close},  # NaN kept
    )
    assert list(got.columns) == ["minute", "open", "high", "low", "close", *at_close,
                                 "observations", "total_volume"]  # fmt: skip
    assert got["minute"].to_list() == want.index.to_list()
    for col in ("open", "high", "low", "close", *at_close):  # exact doubles, NaN where NULL
        assert got[col].to_numpy().tobytes() == want[col].to_numpy("float64").tobytes(), col
    assert got["observations"].to_list() == want["observations"].to_list()
    # the volume pane: CoinGecko's 24 h volume as recorded at each minute's close
    close_ts = window.groupby(minute)["ts"].max()
    volume = raw[raw["id"] == coin].set_index("ts")["total_volume"]
    assert got["total_volume"].to_list() == volume.loc[close_ts.to_list()].to_list()
    assert got["total_volume"].notna().all()
    empty = q.candles(db, coin, end + q.RANGES["15 min"], end + q.RANGES["1 hour"])  # no rows
    assert empty.empty and list(empty.columns) == list(got.columns)
    assert empty.dtypes.to_dict() == got.dtypes.to_dict()
    latest = q.latest_rows(db, coin, start, end, limit=5)
    assert latest["ts"].to_list() == window["ts"].iloc[::-1].head(5).to_list()


def test_long_numeric_results_read_every_double_exactly(empty_db, monkeypatch):
    """``Database.query_csv`` (the candles' route: PostgreSQL's CSV read by Arrow) gives each
    double PostgreSQL holds bit for bit, as psycopg2's row fetch does: random bit patterns,
    subnormals, the extremes, -0, infinities, NaN and NULL."""
    rng = np.random.default_rng(30)
    values = rng.integers(0, 2**64, 20_000, dtype=np.uint64).view(np.float64)
    special = [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1 + 0.2, 1e23,
               -0.0, math.inf, -math.inf, math.nan, None]  # fmt: skip
    column = [None if np.isnan(v) else float(v) for v in values] + special
    monkeypatch.setitem(q.SQL, "doubles", "SELECT x FROM unnest(%(xs)s::float8[]) x")
    db = q.Database(empty_db)
    try:
        got = db.query_csv("doubles", {"x": "float64"}, xs=column)["x"].to_numpy()
        want = db.query("doubles", xs=column)["x"].to_numpy(dtype="float64")
    finally:
        db.close()
    assert got.dtype == np.float64 and len(got) == len(column)
    assert (got.view(np.uint64) == want.view(np.uint64)).all()  # NaN and -0 bits included
    assert np.isnan(got[-2]) and np.isnan(got[-1])  # NaN, and NULL read as NaN


def test_long_text_results_read_every_text_as_it_is(empty_db, monkeypatch):
    """Text through ``Database.query_csv``: digits stay text ("007"), the empty text stays
    empty and NULL is None (as psycopg2 fetches them), commas, quotes, newlines and non-ASCII
    as they are; a column of one NULL per row keeps every row."""
    texts = ["007", "1inch", "", None, "a,b", 'say "hi"', "two\nlines", "été", " padded "]
    monkeypatch.setitem(q.SQL, "texts", "SELECT t FROM unnest(%(ts)s::text[]) t")
    db = q.Database(empty_db)
    try:
        got = db.query_csv("texts", {"t": "str"}, ts=texts)["t"].to_list()
        assert got == db.query("texts", ts=texts)["t"].to_list() == texts
        nulls = db.query_csv("texts", {"t": "str"}, ts=[None, None, None])["t"].to_list()
    finally:
        db.close()
    assert nulls == [None, None, None]


def test_sparklines_are_each_coins_last_hour(seeded, db):
    indicators = seeded[2]
    coins = ["coin-01", "coin-04"]
    end = indicators["ts"].max()
    got = q.sparklines(db, coins, end)
    window = indicators[
        indicators["coin_id"].isin(coins)
        & (indicators["ts"] > end - pd.Timedelta(hours=1))
        & (indicators["ts"] <= end)
    ].sort_values(["coin_id", "ts"])
    assert len(got) > 20 and list(got.columns) == ["coin_id", "ts", "price"]
    assert str(got["ts"].dtype) == "datetime64[ns, UTC]"
    assert got["coin_id"].to_list() == window["coin_id"].to_list()
    assert got["ts"].to_list() == window["ts"].to_list()  # to the microsecond
    assert got["price"].to_list() == window["price"].to_list()  # exact doubles


def test_coins_lists_every_coin_with_its_newest_row(seeded, db):
    indicators = seeded[2]
    got = q.coins(db)
    newest = indicators.groupby("coin_id")["ts"].max()
    raw = seeded[1]
    rank = raw.sort_values("ts").groupby("id")["market_cap_rank"].last()  # coin_market's rank
    assert got["coin_id"].to_list() == sorted(newest.index, key=lambda c: (rank[c], c))
    assert got.set_index("coin_id")["newest_ts"].to_dict() == newest.to_dict()
    solo = q.candles(db, SOLO, newest[SOLO] - q.RANGES["7 days"], newest[SOLO])
    assert int(solo["observations"].sum()) == 1


def test_missing_tables_and_unreachable_database_are_typed(empty_db):
    db = q.Database(empty_db)
    with pytest.raises(q.NoData, match="market_movers"):
        q.latest_snapshot(db)
    with pytest.raises(q.NoData, match="price_indicators"):  # same connection, still usable
        q.coins(db)
    with pytest.raises(q.DatabaseUnavailable, match="unreachable"):
        q.latest_snapshot(q.Database("postgresql://x:pw@127.0.0.1:9/x"))
    with pytest.raises(q.DatabaseUnavailable, match="MARKETFLOW_POSTGRES_URL"):
        q.latest_snapshot(q.Database(None))


def test_database_reconnects_after_the_server_drops_it(seeded, postgres_url):
    db = q.Database(seeded[0])
    assert q.latest_snapshot(db) is not None
    with db.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (backend,) = cur.fetchone()
    sql(postgres_url, "SELECT pg_terminate_backend(%s)", (backend,))
    with pytest.raises(q.DatabaseUnavailable):
        q.latest_snapshot(db)
    assert q.latest_snapshot(db) is not None  # the next call reconnects
    db.close()


def test_forecast_reads(seeded, db):
    url, _raw, indicators, _movers = seeded
    create_forecast_tables(url)
    coin = "coin-02"
    rows = indicators[indicators["coin_id"] == coin].sort_values("ts")
    origins = rows["ts"].iloc[-14:-11]  # targets 10 polls later: all in the past
    insert_forecasts(url, coin, rows, origins)
    end = rows["ts"].max()
    got = q.coin_forecasts(db, coin, end - q.RANGES["1 hour"], end)
    assert got["origin_ts"].to_list() == origins.to_list()
    outcomes = view.forecast_outcomes(got, q.candles(db, coin, end - q.RANGES["1 hour"], end))
    assert outcomes["actual"].notna().all() and outcomes["inside_80"].notna().all()
    promoted = q.promoted_forecast(db)
    assert promoted[["model", "mase"]].values.tolist() == [["gbm", 0.8]]


def test_every_query_is_served_from_an_index(seeded, db):
    """With sequential scans disabled, no plan may scan a Marketflow table sequentially."""
    url = seeded[0]
    create_forecast_tables(url)
    for table in ("check_results", "alert_history"):
        assert sql(url, "SELECT to_regclass(%s)", (table,))[0][0] == table
    params = q.example_params(db)
    assert set(params) == set(q.SQL)
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")
            for name, statement in q.SQL.items():
                cur.execute("EXPLAIN (FORMAT JSON) " + statement, params[name])
                plan = json.dumps(cur.fetchone()[0])
                assert '"Seq Scan"' not in plan, (name, plan)
    finally:
        conn.close()


def test_a_coins_series_is_read_from_the_key_alone(seeded, db):
    """The 7-day candles come from an index-only scan of price_indicators' key (it carries the
    indicator columns), never from the heap."""
    url = seeded[0]
    params = q.example_params(db)
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("EXPLAIN (FORMAT JSON) " + q.SQL["candles"], params["candles"])
            plan = json.dumps(cur.fetchone()[0])
    finally:
        conn.close()
    assert '"Index Only Scan"' in plan and '"price_indicators_pkey"' in plan, plan
