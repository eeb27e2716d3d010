"""SQL of the incremental refresh's bookkeeping table (``schema.REFRESH_LEDGER_TABLE``).

One row per hourly partition of ``price_indicators`` / ``market_movers``; what the columns mean
is documented in :mod:`marketflow_assets.schema` and how they are used in
:mod:`marketflow_assets.defs.indicators.incremental`. Functions here take an open psycopg2 cursor
so that
the ledger is updated in the same transaction as the rows it describes
(``PostgresResource.replace_period(after_write=...)``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from marketflow_assets.schema import REFRESH_LEDGER_TABLE, SOURCE_COLUMN, SOURCE_DAGSTER

LEDGER = REFRESH_LEDGER_TABLE
#: The ledger describes what Dagster wrote: rows of the live path (``source = 'live'``, ahead of
#: the raw data) do not count as a change behind the refresh's back.
_DAGSTER_ROWS = f" AND {SOURCE_COLUMN} = '{SOURCE_DAGSTER}'"
#: Advisory lock serialising refreshes of the indicator tables (plan, compute and write), so a
#: refresh never plans from a ledger that another refresh is about to change.
REFRESH_LOCK = "marketflow:indicator-refresh"


@dataclass(frozen=True)
class LedgerRow:
    partition_start: datetime
    raw_files: frozenset[str] | None  # None: the next refresh recomputes the whole hour
    indicators_newest_ts: datetime | None
    movers_from: datetime | None  # None: market_movers is up to date with price_indicators
    movers_newest_ts: datetime | None


def _utc(value) -> datetime | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def read(cur, partition_start: datetime) -> LedgerRow | None:
    """The ledger row of one hourly partition, or None."""
    cur.execute(
        f"SELECT partition_start, raw_files, indicators_newest_ts, movers_from, movers_newest_ts "
        f"FROM {LEDGER} WHERE partition_start = %s",
        (partition_start,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    return LedgerRow(
        _utc(row[0]),
        None if row[1] is None else frozenset(row[1]),
        _utc(row[2]),
        _utc(row[3]),
        _utc(row[4]),
    )


def newest_ts(cur, table: str, ts_column: str, start: datetime, end: datetime) -> datetime | None:
    """Newest ``ts_column`` of ``table`` in ``[start, end)`` (an index lookup), among the rows
    Dagster wrote (the live path's rows are not the refresh's business)."""
    cur.execute(
        f"SELECT max({ts_column}) FROM {table} WHERE {ts_column} >= %s AND {ts_column} < %s"
        f"{_DAGSTER_ROWS}",
        (start, end),
    )
    return _utc(cur.fetchone()[0])


def record_indicators(
    cur,
    partition_start: datetime,
    partition_end: datetime,
    raw_files: Sequence[str],
    changed: bool,
    movers_from: datetime,
) -> None:
    """After ``price_indicators`` was written for (part of) one hour: remember the raw files it
    now reflects and its newest ``ts``; when rows changed, ``market_movers`` must be recomputed
    from ``movers_from`` (kept if an earlier pending point is older)."""
    cur.execute(
        f"""
        INSERT INTO {LEDGER} AS l
            (partition_start, raw_files, indicators_newest_ts, movers_from, updated_at)
        VALUES (%(start)s, %(files)s,
                (SELECT max(ts) FROM price_indicators WHERE ts >= %(start)s AND ts < %(end)s
                 {_DAGSTER_ROWS}),
                CASE WHEN %(changed)s THEN %(movers_from)s::timestamptz END, now())
        ON CONFLICT (partition_start) DO UPDATE SET
            raw_files = EXCLUDED.raw_files,
            indicators_newest_ts = EXCLUDED.indicators_newest_ts,
            movers_from = CASE WHEN %(changed)s
                THEN least(l.movers_from, EXCLUDED.movers_from) ELSE l.movers_from END,
            updated_at = now()
        """,
        {
            "start": partition_start,
            "end": partition_end,
            "files": sorted(raw_files),
            "changed": bool(changed),
            "movers_from": movers_from,
        },
    )


def invalidate_from(cur, partition_start: datetime) -> int:
    """Make the partitions from ``partition_start`` on recompute their whole hour next time
    (their stored state came from rows that just changed). Returns how many were invalidated."""
    cur.execute(
        f"UPDATE {LEDGER} SET raw_files = NULL, updated_at = now() "
        "WHERE partition_start >= %s AND raw_files IS NOT NULL",
        (partition_start,),
    )
    return cur.rowcount


def record_movers(cur, partition_start: datetime, partition_end: datetime) -> None:
    """After ``market_movers`` was brought up to date for one hour."""
    cur.execute(
        f"""
        INSERT INTO {LEDGER} AS l (partition_start, movers_from, movers_newest_ts, updated_at)
        VALUES (%(start)s, NULL,
                (SELECT max(snapshot_ts) FROM market_movers
                 WHERE snapshot_ts >= %(start)s AND snapshot_ts < %(end)s
                 {_DAGSTER_ROWS}), now())
        ON CONFLICT (partition_start) DO UPDATE SET
            movers_from = NULL,
            movers_newest_ts = EXCLUDED.movers_newest_ts,
            updated_at = now()
        """,
        {"start": partition_start, "end": partition_end},
    )


def forget(cur, start: datetime, end: datetime) -> None:
    """Drop the ledger rows of the partitions in ``[start, end)``: their next refresh is a full
    recompute of the hour (used by benchmarks that time exactly that)."""
    cur.execute(
        f"DELETE FROM {LEDGER} WHERE partition_start >= %s AND partition_start < %s", (start, end)
    )


@contextmanager
def refresh_lock(url: str) -> Iterator[None]:
    """Hold :data:`REFRESH_LOCK` (a session advisory lock on a dedicated connection; released
    when the block ends or the process dies)."""
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (REFRESH_LOCK,))
        yield
    finally:
        conn.close()
