"""The tables' DDL on a real PostgreSQL: the indexes a new database gets and those an older one
is given."""

from __future__ import annotations

import psycopg2

from marketflow_assets.schema import KEY_INCLUDE, create_tables

SERIES_INDEX = "price_indicators_coin_series_idx"


def _run(url: str, *statements: str | tuple[str, tuple]) -> list[tuple]:
    """Run ``statements`` (SQL, or SQL and its parameters) in one transaction; the last one's
    rows (none when it returns none)."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            for statement in statements:
                sql, params = statement if isinstance(statement, tuple) else (statement, None)
                cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _indexes(url: str) -> dict[str, str]:
    return dict(
        _run(url, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'price_indicators'")
    )


def _create(url: str) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            create_tables(cur)
    finally:
        conn.close()


def test_a_new_indicator_table_keeps_one_index_per_coin_series(pg_clean):
    """The key carries the indicator columns; no second (coin_id, ts) index is made."""
    _create(pg_clean)
    _create(pg_clean)  # idempotent
    indexes = _indexes(pg_clean)
    key = indexes["price_indicators_pkey"]
    assert "(coin_id, ts) INCLUDE (" + ", ".join(KEY_INCLUDE["price_indicators"]) + ")" in key
    assert SERIES_INDEX not in indexes
    assert [d for d in indexes.values() if "(coin_id, ts)" in d] == [key]


def test_an_older_indicator_table_gets_the_series_index_of_its_own(pg_clean):
    """A table made when the key was plain keeps it, and gets the covering index beside it."""
    _run(
        pg_clean,
        "CREATE TABLE price_indicators (coin_id text NOT NULL, symbol text, "
        "ts timestamptz NOT NULL, price double precision, change_1min double precision, "
        "change_5min double precision, sma_5min double precision, "
        "ema_3min double precision, volatility_5min double precision, "
        "PRIMARY KEY (coin_id, ts))",
    )
    _create(pg_clean)
    indexes = _indexes(pg_clean)
    assert "INCLUDE" not in indexes["price_indicators_pkey"]
    assert indexes[SERIES_INDEX].endswith(
        "(coin_id, ts) INCLUDE (" + ", ".join(KEY_INCLUDE["price_indicators"]) + ")"
    )


def test_the_index_of_live_rows_by_ts_is_dropped_and_the_live_comparison_uses_the_ts_index(
    pg_clean,
):
    """Earlier versions kept the live rows in an index of their own (every live insert paid for
    it); a table that has it loses it, and the comparison before Dagster replaces a period's
    rows (``source = 'live'`` over a range of ``ts``) is served by ``price_indicators_ts_idx``."""
    _create(pg_clean)
    _run(
        pg_clean,
        "CREATE INDEX price_indicators_live_idx ON price_indicators (ts) WHERE source = 'live'",
    )
    assert "price_indicators_live_idx" in _indexes(pg_clean)
    _create(pg_clean)
    _create(pg_clean)  # idempotent
    indexes = _indexes(pg_clean)
    assert "price_indicators_live_idx" not in indexes
    assert sorted(indexes) == ["price_indicators_pkey", "price_indicators_ts_idx"]
    plan = _run(
        pg_clean,
        "INSERT INTO price_indicators (coin_id, ts, price, source) SELECT "
        "'coin-' || (i % 500), timestamptz '2026-12-07' + (i / 500) * interval '30 s', "
        "1.0, CASE WHEN i >= 49500 THEN 'live' ELSE 'dagster' END "
        "FROM generate_series(0, 49999) i",
        "ANALYZE price_indicators",
        (
            "EXPLAIN SELECT coin_id, ts, price FROM price_indicators WHERE ts >= %s "
            "AND ts < %s AND (source = 'live')",
            ("2026-12-07T00:49:30Z", "2026-12-07T00:50:00Z"),
        ),
    )
    plan = "\n".join(row[0] for row in plan)
    assert "price_indicators_ts_idx" in plan, plan
