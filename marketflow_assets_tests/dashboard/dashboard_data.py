"""Data for the dashboard tests: a small synthetic market written through the real code path
(``indicators.compute_indicators`` / ``compute_movers`` -> ``PostgresResource.replace_period``)
into a database of its own on the test PostgreSQL server."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import psycopg2

from marketflow_assets.indicators import compute_indicators, compute_movers
from marketflow_assets.market import write_coin_market
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.schema import TABLES

SOLO = "solo-coin"  # a coin with a single observation


def synthetic_raw(end: pd.Timestamp, coins: int = 12, polls: int = 40, seed: int = 5):
    """``coins`` coins polled every 30 s for ``polls`` polls ending at ``end``: random walks
    with distinct moves (so gainers and losers are unambiguous), plus one single observation."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(end=end, periods=polls, freq="30s")
    rows = []
    for k in range(coins):
        price = 10.0 ** rng.uniform(-3, 4)
        drift = rng.normal(0, 0.004)
        for t in times:
            price *= float(np.exp(drift + rng.normal(0, 0.002)))
            rows.append((f"coin-{k:02d}", f"c{k:02d}", t, price))
    rows.append((SOLO, "solo", times[polls // 2], 3.25))
    frame = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    # CoinGecko's market fields: a supply per coin gives the market cap, its rank at each poll
    supply = {c: 10.0 ** (6 + 0.37 * i % 5) for i, c in enumerate(sorted(frame["id"].unique()))}
    frame["name"] = [f"Coin {c[-2:].upper()}" for c in frame["id"]]
    frame["market_cap"] = frame["current_price"] * frame["id"].map(supply)
    frame["market_cap_rank"] = (
        frame.groupby("ts")["market_cap"].rank(ascending=False, method="first").astype("int64")
    )
    frame["total_volume"] = frame["market_cap"] * 0.05
    frame["high_24h"] = frame["current_price"] * 1.04
    frame["low_24h"] = frame["current_price"] * 0.97
    frame["price_change_percentage_24h"] = (frame["market_cap_rank"] - 6) * 0.75
    return frame


def seed_market(url: str, raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the indicators and movers of ``raw`` to ``url``; returns both frames."""
    indicators = compute_indicators(raw)
    movers = compute_movers(indicators)
    postgres = PostgresResource(url=url)
    postgres.ensure_tables()
    start = raw["ts"].min().floor("h")
    end = raw["ts"].max().floor("h") + pd.Timedelta(hours=1)
    postgres.replace_period("price_indicators", indicators, start, end)
    postgres.replace_period("market_movers", movers, start, end, ts_column="snapshot_ts")
    if "market_cap" in raw:
        with postgres.get_connection() as conn, conn.cursor() as cur:
            write_coin_market(cur, raw)
    return indicators, movers


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def create_database(server_url: str, prefix: str) -> str:
    """A new empty database on the server of ``server_url``; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        conn.close()


def sql(url: str, statement: str, params=None) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


#: SPEC's forecast tables (issue 14 defines them in schema.py; until then the tests create them
#: from the SPEC columns so the forecast panels are exercised).
SPEC_FORECAST_DDL = {
    "price_forecasts": """CREATE TABLE IF NOT EXISTS price_forecasts (
        coin_id text NOT NULL, origin_ts timestamptz NOT NULL, horizon_s int NOT NULL,
        target_ts timestamptz NOT NULL, predicted_price double precision NOT NULL,
        lower_80 double precision NOT NULL, upper_80 double precision NOT NULL,
        model text NOT NULL, PRIMARY KEY (coin_id, origin_ts, horizon_s))""",
    "forecast_evaluation": """CREATE TABLE IF NOT EXISTS forecast_evaluation (
        evaluated_at timestamptz NOT NULL, model text NOT NULL, horizon_s int NOT NULL,
        n int NOT NULL, mae double precision, mase double precision,
        directional_accuracy double precision, coverage_80 double precision,
        promoted boolean NOT NULL, PRIMARY KEY (evaluated_at, model, horizon_s))""",
}


def create_forecast_tables(url: str) -> None:
    if all(t in TABLES for t in SPEC_FORECAST_DDL):
        PostgresResource(url=url).ensure_tables()
        return
    for ddl in SPEC_FORECAST_DDL.values():
        sql(url, ddl)


def insert_forecasts(url: str, coin: str, rows: pd.DataFrame, origins) -> None:
    """Forecasts of ``coin`` at ``origins`` (300 s ahead, naive-like, interval +-1 %) and two
    evaluations: naive promoted at 10:00, ``gbm`` (MASE 0.8) promoted at 11:00."""
    prices = {ts: float(p) for ts, p in zip(rows["ts"], rows["price"], strict=True)}
    forecast_rows = [
        (coin, o.to_pydatetime(), 300, (o + pd.Timedelta(seconds=300)).to_pydatetime(),
         prices[o] * 1.001, prices[o] * 0.99, prices[o] * 1.01, "naive")
        for o in origins
    ]  # fmt: skip
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM price_forecasts")
            cur.execute("DELETE FROM forecast_evaluation")
            cur.executemany(
                "INSERT INTO price_forecasts (coin_id, origin_ts, horizon_s, target_ts,"
                " predicted_price, lower_80, upper_80, model)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                forecast_rows,
            )
            for when, promoted in (("2026-03-01T10:00Z", "naive"), ("2026-03-01T11:00Z", "gbm")):
                for model in ("naive", "gbm"):
                    cur.execute(
                        "INSERT INTO forecast_evaluation (evaluated_at, model, horizon_s, n, "
                        "mae, mase, directional_accuracy, coverage_80, promoted) "
                        "VALUES (%s, %s, 300, 100, 0.5, %s, 0.55, 0.8, %s)",
                        (when, model, 1.0 if model == "naive" else 0.8, model == promoted),
                    )
    finally:
        conn.close()


def drop_forecast_tables(url: str) -> None:
    sql(url, "DROP TABLE IF EXISTS price_forecasts, forecast_evaluation")
