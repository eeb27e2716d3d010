"""``resources/refresh_ledger.py`` against PostgreSQL: what a refresh records, how an earlier
change invalidates later hours, how the movers' pending point is kept, and the refresh lock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg2

from marketflow_assets.resources import refresh_ledger as ledger
from marketflow_assets.resources.postgres import PostgresResource

H0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
H1 = H0 + timedelta(hours=1)
H2 = H0 + timedelta(hours=2)


def _cursor(url):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn, conn.cursor()


def test_record_read_invalidate_movers_and_forget(pg_clean):
    PostgresResource(url=pg_clean).ensure_tables()
    conn, cur = _cursor(pg_clean)
    try:
        cur.execute(
            "INSERT INTO price_indicators (coin_id, symbol, ts, price, source) "
            "VALUES ('bitcoin', 'btc', %s, 1, 'dagster'), ('bitcoin', 'btc', %s, 2, 'dagster'), "
            "('bitcoin', 'btc', %s, 3, 'live')",
            (H0 + timedelta(minutes=1), H0 + timedelta(minutes=2), H0 + timedelta(minutes=3)),
        )
        assert ledger.read(cur, H0) is None
        ledger.record_indicators(cur, H0, H1, ["b.parquet", "a.parquet"], True, H0)
        row = ledger.read(cur, H0)
        assert row.raw_files == frozenset({"a.parquet", "b.parquet"})
        # the newest row Dagster wrote (the live path's newer row does not count)
        assert row.indicators_newest_ts == H0 + timedelta(minutes=2)
        assert ledger.newest_ts(cur, "price_indicators", "ts", H0, H1) == row.indicators_newest_ts
        assert row.movers_from == H0

        # a later change keeps the earlier pending movers point; no change keeps it as is
        ledger.record_indicators(cur, H0, H1, ["a.parquet"], True, H0 + timedelta(minutes=30))
        assert ledger.read(cur, H0).movers_from == H0
        ledger.record_indicators(cur, H0, H1, ["a.parquet"], False, H0 + timedelta(minutes=5))
        assert ledger.read(cur, H0).movers_from == H0
        ledger.record_movers(cur, H0, H1)
        assert ledger.read(cur, H0).movers_from is None

        ledger.record_indicators(cur, H1, H2, ["c.parquet"], False, H1)
        assert ledger.invalidate_from(cur, H1) == 1  # only the hours from H1 on
        assert ledger.read(cur, H1).raw_files is None
        assert ledger.read(cur, H0).raw_files == frozenset({"a.parquet"})
        assert ledger.invalidate_from(cur, H1) == 0  # already invalid

        ledger.forget(cur, H0, H1)
        assert ledger.read(cur, H0) is None and ledger.read(cur, H1) is not None
    finally:
        conn.close()


def test_refresh_lock_serialises_two_holders(pg_clean):
    order = []

    def second():
        with ledger.refresh_lock(pg_clean):
            order.append("second")

    with ledger.refresh_lock(pg_clean):
        order.append("first")
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)
        assert order == ["first"]  # the second holder waits
    waiter.join(10)
    assert order == ["first", "second"]
