"""The provenance column on tables created before the live path existed."""

from __future__ import annotations

import psycopg2

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
