"""PostgreSQL side of the live path: state on start, stored offsets, and the batch write.

A batch is written in two transactions: first its new ``price_indicators`` rows and the
``market_movers`` of the snapshots they touch (:meth:`LiveStore.write_indicators`: what the
latency is measured to), then - the live consumer does this once no batch came for half a
second, for all the batches written since - the records' market data and the next offset per
partition in ``live_offsets`` (:meth:`LiveStore.write_market`). Both are idempotent, so the
stored offsets never pass a record whose rows are not in the tables: a consumer stopped in
between reads the records again, skips their indicators (already there: not newer than each
coin's last row) and writes their market data once more, to the same result.
:meth:`LiveStore.write_batch` does both in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

import numpy as np
import pandas as pd

from marketflow_assets import indicators as ind
from marketflow_assets.market import write_coin_market
from marketflow_assets.resources.postgres import binary_payload
from marketflow_assets.schema import (
    LIVE_OFFSETS_TABLE,
    MOVER_INPUT_COLUMNS,
    SOURCE_COLUMN,
    SOURCE_DAGSTER,
    SOURCE_LIVE,
    TABLES,
    column_names,
    create_tables,
    distinct_values_cte,
)

logger = logging.getLogger(__name__)

INDICATOR_COLS = column_names("price_indicators")
MOVER_COLS = column_names("market_movers")


#: Each stored coin's rows within ``%(window)s`` seconds before its newest ``ts``, and its last
#: row before them (:meth:`LiveStore.load_state`).
STATE_ROWS_SQL = (
    distinct_values_cte("stored", "price_indicators", "coin_id")
    + """
SELECT p.coin_id, p.ts, p.price, p.ema_3min
FROM stored s
CROSS JOIN LATERAL (
    SELECT max(q.ts) - make_interval(secs => %(window)s) AS cut
    FROM price_indicators q WHERE q.coin_id = s.coin_id
) n
CROSS JOIN LATERAL (
    SELECT max(q.ts) AS first FROM price_indicators q
    WHERE q.coin_id = s.coin_id AND q.ts < n.cut
) b
JOIN price_indicators p ON p.coin_id = s.coin_id AND p.ts >= coalesce(b.first, n.cut)
WHERE s.coin_id IS NOT NULL
"""
)


#: The mover candidates of the snapshots ``%(ts)s`` whose movers Dagster has not written: at
#: each, the rows (a 5-minute change, not NaN) that ``rank()`` would place within the top
#: ``%(n)s`` either way, ties included. A row ranks within the top N by ``change_5min DESC`` -
#: ``1 +`` the rows strictly above it ``<= N`` - exactly when its change is at least the N-th
#: largest (counted with repeats), and likewise from below; with fewer than N rows every row
#: does. So each snapshot's two cut-off values are read by bounded sorts (PostgreSQL's top-N
#: heapsort) and its rows filtered by them: a whole market 6 ms against 20-27 ms for the two
#: window functions over all of its rows (full sorts), in the transaction that commits a poll's
#: last rows (docs/PERFORMANCE.md, twentieth round).
_CHANGE = "p.change_5min IS NOT NULL AND p.change_5min <> 'NaN'::float8"
MOVER_CANDIDATES_SQL = f"""
WITH snapshot AS MATERIALIZED (
    SELECT DISTINCT s.ts FROM unnest(%(ts)s::timestamptz[]) AS s(ts)
    WHERE NOT EXISTS (
        SELECT 1 FROM market_movers d
        WHERE d.snapshot_ts = s.ts AND d.{SOURCE_COLUMN} = %(dagster)s
    )
), cut AS MATERIALIZED (
    SELECT s.ts,
        (SELECT p.change_5min FROM price_indicators p WHERE p.ts = s.ts AND {_CHANGE}
         ORDER BY p.change_5min DESC OFFSET %(n)s - 1 LIMIT 1) AS high,
        (SELECT p.change_5min FROM price_indicators p WHERE p.ts = s.ts AND {_CHANGE}
         ORDER BY p.change_5min OFFSET %(n)s - 1 LIMIT 1) AS low
    FROM snapshot s
)
SELECT {", ".join(f"p.{name}" for name in MOVER_INPUT_COLUMNS)}
FROM cut c JOIN price_indicators p ON p.ts = c.ts
WHERE {_CHANGE} AND (c.high IS NULL OR p.change_5min >= c.high OR p.change_5min <= c.low)
"""


def _lock_sql(table: str) -> str:
    # the per-table lock of PostgresResource.replace_period: Dagster's writes and ours serialise
    return f"SELECT pg_advisory_xact_lock(hashtext('marketflow:{table}'))"


class LiveStore:
    """One PostgreSQL connection of the live consumer."""

    def __init__(self, url: str):
        import psycopg2

        self.url = url
        self.conn = psycopg2.connect(url, connect_timeout=10)
        with self.conn, self.conn.cursor() as cur:
            create_tables(cur)
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _live_indicators "
                "(LIKE price_indicators INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _live_movers "
                "(LIKE market_movers INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------------------------
    def load_offsets(self, topic: str) -> dict[int, int]:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                f"SELECT partition, next_offset FROM {LIVE_OFFSETS_TABLE} WHERE topic = %s",
                (topic,),
            )
            return {int(p): int(o) for p, o in cur.fetchall()}

    def load_state(self) -> ind.LiveState:
        """The live state as the tables hold it: per coin, its rows of the last
        :data:`~marketflow_assets.indicators.LIVE_REBUILD_SECONDS` before ITS newest ``ts``
        and its last row before them (reference price and EMA). Per coin, not before the
        table's newest ``ts``: the coins of a partition read minutes behind the others (then
        the consumer restarted) need their own recent rows for their next windows and changes.
        One loose index scan of the coins, then per coin two index probes (its newest ``ts``,
        its last row before the window) and one index range scan."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SET LOCAL TIME ZONE 'UTC'")
            cur.execute(STATE_ROWS_SQL, {"window": float(ind.LIVE_REBUILD_SECONDS)})
            stored = cur.fetchall()
        if not stored:
            return ind.LiveState.empty()
        rows = pd.DataFrame(stored, columns=["coin_id", "ts", "price", "ema_3min"])
        rows["ts"] = pd.to_datetime(rows["ts"], utc=True)
        rows["price"] = rows["price"].astype("float64")
        rows["ema_3min"] = rows["ema_3min"].astype("float64")
        return ind.LiveState.from_rows(rows)

    # ------------------------------------------------------------------------------------
    def write_batch(
        self,
        topic: str,
        rows: pd.DataFrame,
        next_offsets: Mapping[int, int],
        market=None,
    ) -> tuple[int, int]:
        """Both writes of a batch in ONE transaction: :meth:`write_indicators`' and
        :meth:`write_market`'s. Returns (indicator rows inserted, mover rows written)."""
        with self.conn, self.conn.cursor() as cur:
            counts = self._indicators(cur, rows)
            self._market(cur, topic, market, next_offsets)
        return counts

    def write_indicators(self, rows: pd.DataFrame, movers: bool = True) -> tuple[int, int]:
        """One transaction: insert ``rows`` (source 'live'; an existing row - Dagster's - wins)
        and recompute ``market_movers`` for every snapshot ``ts`` of ``rows`` from the table's
        rows at that ``ts`` (snapshots Dagster already wrote movers for are left to Dagster;
        none when not ``movers``: the caller writes rows of every one of these snapshots next).
        The offsets do not move: a consumer that stops before :meth:`write_market` reads these
        records again, and ``advance_indicators`` skips them (not newer than their coin's last
        row). Returns (indicator rows inserted, mover rows written).

        Committed without waiting for the WAL flush (``synchronous_commit = off`` for this
        transaction: visible at once, durable within PostgreSQL's WAL writer delay, 0.2 s by
        default). The next synchronous commit of this connection - :meth:`write_market`, which
        stores the offsets, or a price alert's record - flushes the WAL up to itself, so stored
        offsets never pass rows that a PostgreSQL crash could take back; rows taken back are
        computed again from the records after the stored offsets."""
        with self.conn, self.conn.cursor() as cur:
            return self._indicators(cur, rows, movers, durable=False)

    def write_market(self, topic: str, market, next_offsets: Mapping[int, int]) -> None:
        """One transaction: move ``coin_market`` on to the newest records of ``market`` (raw
        records; a row never moves back in time), add them to ``coin_market_history`` (a stored
        ``(coin_id, ts)`` is kept) and store ``next_offsets``. Idempotent: written again after
        a stop, it changes nothing."""
        with self.conn, self.conn.cursor() as cur:
            self._market(cur, topic, market, next_offsets)

    def _indicators(
        self, cur, rows: pd.DataFrame, movers: bool = True, durable: bool = True
    ) -> tuple[int, int]:
        if not len(rows):
            return 0, 0
        flush = "" if durable else "SET LOCAL synchronous_commit = off; "
        cur.execute(flush + "SET LOCAL TIME ZONE 'UTC'; " + _lock_sql("price_indicators"))
        inserted = _insert_new(cur, rows, "price_indicators", INDICATOR_COLS, "_live_indicators")
        if not movers:
            return inserted, 0
        snapshots = list(pd.DatetimeIndex(snapshot_times(rows), tz="UTC").to_pydatetime())
        return inserted, self._write_movers(cur, snapshots)

    def _market(self, cur, topic: str, market, next_offsets: Mapping[int, int]) -> None:
        if market is not None and len(market):
            cur.execute("SET LOCAL TIME ZONE 'UTC'")
            write_coin_market(cur, market)
        if next_offsets:
            cur.executemany(
                f"INSERT INTO {LIVE_OFFSETS_TABLE} AS o (topic, partition, next_offset) "
                "VALUES (%s, %s, %s) ON CONFLICT (topic, partition) DO UPDATE SET "
                "next_offset = EXCLUDED.next_offset, updated_at = now()",
                [(topic, int(p), int(o)) for p, o in sorted(next_offsets.items())],
            )

    def _write_movers(self, cur, snapshots: list[datetime]) -> int:
        # One round trip: the lock; the live movers of the snapshots Dagster has not written
        # movers for (those are left to Dagster) deleted; their candidates read
        # (MOVER_CANDIDATES_SQL), among which compute_movers picks exactly what it would pick
        # among all of the snapshot's rows (a whole market: 10+ rows read instead of 15,000).
        cur.execute(
            _lock_sql("market_movers") + "; "
            "DELETE FROM market_movers m WHERE m.snapshot_ts = ANY(%(ts)s) "
            f"AND m.{SOURCE_COLUMN} = %(live)s AND NOT EXISTS (SELECT 1 FROM market_movers d "
            f"WHERE d.snapshot_ts = m.snapshot_ts AND d.{SOURCE_COLUMN} = %(dagster)s); "
            + MOVER_CANDIDATES_SQL,
            {"ts": snapshots, "n": ind.TOP_N, "live": SOURCE_LIVE, "dagster": SOURCE_DAGSTER},
        )
        candidates = cur.fetchall()
        if not candidates:  # no 5-minute change yet at these snapshots: no movers
            return 0
        values = dict(zip(MOVER_INPUT_COLUMNS, zip(*candidates, strict=True), strict=True))
        source = pd.DataFrame(
            {
                "coin_id": np.array(values["coin_id"], dtype=object),
                "symbol": np.array(values["symbol"], dtype=object),
                "ts": pd.to_datetime(values["ts"], utc=True, cache=False),
                "price": np.array(values["price"], dtype=np.float64),
                "change_5min": np.array(values["change_5min"], dtype=np.float64),
            }
        )
        movers = ind.compute_movers(source)
        if movers.empty:
            return 0
        return _insert_new(cur, movers, "market_movers", MOVER_COLS, "_live_movers")


def snapshot_times(rows: pd.DataFrame):
    """The distinct ``ts`` of indicator ``rows`` (int64 ns, ascending): the snapshots whose
    movers a write of them recomputes."""
    return np.unique(ind.to_ns(rows["ts"]))


def _insert_new(cur, rows: pd.DataFrame, table: str, columns, staging: str) -> int:
    """Insert ``rows`` (``columns``, source 'live') into ``table`` where its key is free (an
    existing row - Dagster's - wins); returns the rows inserted.

    One binary COPY (:func:`~marketflow_assets.resources.postgres.binary_payload`: a quarter
    less time than CSV) straight into ``table`` (no row of the batch taken yet: the usual case,
    ~30 % less time than through a staging table at 15,000 rows); when a key is taken, that COPY
    is undone (a savepoint) and the rows go through the temporary table ``staging`` with ``ON
    CONFLICT DO NOTHING``, so the outcome is the same either way."""
    import psycopg2.errors
    import pyarrow as pa

    cols = ", ".join((*columns, SOURCE_COLUMN))
    # column by column (pandas' whole-frame conversion and a frame copy to add the source cost
    # 1.5 ms more a batch, at 250 rows as at 15,000), then in key order: each row's key lands
    # next to the one before it in the key's B-tree (15,000 rows: 4 ms to sort, 11 ms less in
    # the server)
    arrays = [pa.Array.from_pandas(rows[name]) for name in columns]
    arrays.append(pa.array(np.full(len(rows), SOURCE_LIVE, dtype=object), pa.string()))
    key = [(name, "ascending") for name in TABLES[table][1]]
    ordered = pa.Table.from_arrays(arrays, names=[*columns, SOURCE_COLUMN]).sort_by(key)
    payload = binary_payload(ordered, table)
    cur.execute("SAVEPOINT live_copy")
    try:
        cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT binary)", payload)
        return cur.rowcount
    except psycopg2.errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT live_copy")
    payload.seek(0)
    cur.copy_expert(f"COPY {staging} ({cols}) FROM STDIN WITH (FORMAT binary)", payload)
    cur.execute(
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {staging} "
        f"ON CONFLICT ({', '.join(TABLES[table][1])}) DO NOTHING"
    )
    return cur.rowcount
