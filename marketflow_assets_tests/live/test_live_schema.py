"""The provenance column on tables created before the live path existed; coin_market's room
for in-place updates."""

from __future__ import annotations

import time

import pandas as pd
import psycopg2

from marketflow_assets.market import RAW_SOURCE_COLUMNS
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.schema import TABLES, column_names, stored_column_names


def old_ddl(table: str) -> str:
    columns, key = TABLES[table]
    body = ", ".join(f"{name} {kind}" for name, kind in columns)
    return f"CREATE TABLE {table} ({body}, PRIMARY KEY ({', '.join(key)}))"


def test_existing_tables_get_the_source_column_once(pg_clean):
    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        for table in ("price_indicators", "market_movers"):
            cur.execute(old_ddl(table))
        cur.execute(
            "INSERT INTO price_indicators (coin_id, symbol, ts, price) "
            "VALUES ('btc', 'BTC', '2026-03-01T00:00:00Z', 1.0)"
        )
    postgres = PostgresResource(url=pg_clean)
    postgres.ensure_tables()
    postgres.ensure_tables()  # idempotent: no second column, no second constraint
    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        for table in ("price_indicators", "market_movers"):
            cur.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "ORDER BY ordinal_position",
                (table,),
            )
            assert tuple(r[0] for r in cur.fetchall()) == stored_column_names(table)
            assert stored_column_names(table) == (*column_names(table), "source")
            cur.execute(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass "
                "AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%%source%%'",
                (table,),
            )
            assert cur.fetchone()[0] == 1
        cur.execute("SELECT source FROM price_indicators")
        assert cur.fetchall() == [("dagster",)]


def test_coin_market_leaves_room_for_in_place_updates_old_tables_too(pg_clean):
    """``coin_market`` is rewritten at every poll: its pages keep free room (fillfactor 50) so an
    update stays on its page without a new index entry (HOT), on a new database and on one whose
    table was created before: the upserts of the polls after the first are nearly all HOT."""
    from marketflow_assets.live.store import LiveStore
    from marketflow_assets.market import write_coin_market

    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute(old_ddl("coin_market"))
    PostgresResource(url=pg_clean).ensure_tables()
    PostgresResource(url=pg_clean).ensure_tables()  # idempotent
    store = LiveStore(pg_clean)
    try:
        for minute in range(4):
            raw = pd.DataFrame(
                {
                    "id": [f"coin-{i}" for i in range(2000)],
                    "symbol": "c",
                    "name": "Coin",
                    "current_price": 1.0 + minute,
                    "ts": pd.Timestamp("2026-03-01T00:00:00Z") + pd.Timedelta(minutes=minute),
                }
            )
            for column in RAW_SOURCE_COLUMNS:
                if column not in raw:
                    raw[column] = None
            with store.conn, store.conn.cursor() as cur:
                write_coin_market(cur, raw, history=False)
    finally:
        store.close()
    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute("SELECT reloptions FROM pg_class WHERE oid = 'coin_market'::regclass")
        assert cur.fetchone()[0] == ["fillfactor=50"]

    def counts() -> tuple[int, int]:
        # the writer's backend reports its statistics when it exits, which may be a moment
        # after its connection closed: read them in a new transaction each time
        with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relname = 'coin_market'"
            )
            return cur.fetchone()

    deadline = time.monotonic() + 15
    updated, hot = counts()
    while updated < 3 * 2000 and time.monotonic() < deadline:
        time.sleep(0.1)
        updated, hot = counts()
    assert updated == 3 * 2000 and hot >= 0.9 * updated, (updated, hot)
