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
from marketflow_assets.resources.postgres import PostgresResource

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
