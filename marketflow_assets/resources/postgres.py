"""PostgreSQL resource: connections to the database that holds the indicator tables.

Besides connections it owns the few SQL statements the assets need, so that assets stay thin:

* :meth:`PostgresResource.fetch_indicator_state` - per coin, the stored rows an incremental
  refresh continues from (two ``LATERAL ... ORDER BY ts DESC LIMIT 1`` lookups on the primary key
  ``(coin_id, ts)``: cost independent of the table's history);
* :meth:`PostgresResource.replace_period` - idempotent bulk write of one period: ``COPY`` into a
  temporary staging table, then ``DELETE`` the period's rows that changed or vanished and
  ``INSERT ... ON CONFLICT DO NOTHING`` the new ones (unchanged rows are never rewritten), in
  one transaction serialised per table by an advisory lock;
* :meth:`PostgresResource.read_period` - rows of one period, for downstream assets.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from marketflow_assets.schema import (
    INDICATOR_STATE_COLUMNS,
    SOURCE_COLUMN,
    SOURCE_COLUMN_DDL,
    SOURCE_LIVE,
    SOURCE_TABLES,
    TABLES,
    column_names,
    create_tables,
    distinct_values_cte,
    stored_column_names,
)
from marketflow_assets.settings import load_settings, redact_url

_STATE_LOOKUPS = """
SELECT c.coin_id, r.ts AS ref_ts, r.price AS ref_price, e.ts AS ema_ts, e.ema_3min
FROM {coins} AS c(coin_id)
LEFT JOIN LATERAL (
    SELECT p.ts, p.price FROM price_indicators p
    WHERE p.coin_id = c.coin_id AND p.ts < %(ref_before)s
    ORDER BY p.ts DESC LIMIT 1
) r ON true
LEFT JOIN LATERAL (
    SELECT p.ts, p.ema_3min FROM price_indicators p
    WHERE p.coin_id = c.coin_id AND p.ts < %(ema_before)s
    ORDER BY p.ts DESC LIMIT 1
) e ON true
WHERE e.ts IS NOT NULL
"""
#: State of the given coins (``%(coins)s``: text array).
STATE_SQL = _STATE_LOOKUPS.format(coins="unnest(%(coins)s::text[])")
#: State of every stored coin: the distinct coin_ids come from a loose index scan of the primary
#: key (one probe per coin), so the cost does not grow with the history either.
ALL_COINS_STATE_SQL = distinct_values_cte(
    "stored", "price_indicators", "coin_id"
) + _STATE_LOOKUPS.format(coins="(SELECT coin_id FROM stored WHERE coin_id IS NOT NULL)")


def _utc(value: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


#: Starts (or finds) the embedded PostgreSQL with its data in a directory and returns its URL,
#: for a resource without a configured URL. Resources start no process themselves: the
#: composition root (``definitions.py``) hands over
#: :func:`marketflow_assets.runtime.services.embedded_postgres_url`.
EMBEDDED_SERVER: Callable[[Path], str] | None = None


def csv_payload(frame) -> io.BytesIO:
    """``frame`` (a DataFrame or an Arrow table) as a headerless CSV ``COPY`` payload, written
    by Arrow's C++ CSV writer.

    About 10x faster than ``DataFrame.to_csv`` for an hour of indicators. Doubles are written in
    shortest round-trip form (values survive exactly); NaN/None become unquoted empty fields
    (``NULL`` in PostgreSQL's CSV format) while strings are always quoted, so an empty string
    stays an empty string; tz-aware times are written as their UTC time with a ``Z``
    (:func:`_utc_text`).

    The frame is converted on the calling thread (``nthreads=1``): Arrow's default spawns a
    thread pool per call for a frame of more than 100 rows a column, whose string conversions
    contend for the GIL (14.6 against 20 ms of CPU for 10,000 indicator rows).
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    buf = io.BytesIO()
    if isinstance(frame, pa.Table):
        table = frame
    else:
        table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            table = table.set_column(i, field.name, _utc_text(table.column(i)))
    pa_csv.write_csv(table, buf, pa_csv.WriteOptions(include_header=False))
    buf.seek(0)
    return buf


def _binary_type(ddl: str):
    """The Arrow type :func:`binary_payload` writes for a column of this DDL (its first words,
    as in :data:`~marketflow_assets.schema.TABLES`)."""
    import pyarrow as pa

    kinds = {
        "double precision": pa.float64(),
        "bigint": pa.int64(),
        "int": pa.int32(),
        "integer": pa.int32(),
        "text": pa.string(),
        "timestamptz": pa.timestamp("us", tz="UTC"),
    }
    for sql, kind in kinds.items():
        if ddl == sql or ddl.startswith(sql + " "):
            return kind
    raise ValueError(f"binary_payload: no binary form for a column of type {ddl!r}")


def _round_to_us(times):
    """Nanosecond times as microseconds (UTC), rounded half to even: what PostgreSQL makes of
    their text in :func:`csv_payload`'s payload."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(times, pa.ChunkedArray):
        times = times.combine_chunks()
    valid = times.is_valid().to_numpy(zero_copy_only=False)
    q, r = np.divmod(pc.fill_null(times.cast(pa.int64()), 0).to_numpy(), 1000)
    q += (r > 500) | ((r == 500) & (q % 2 == 1))
    return pa.array(q, mask=~valid).cast(pa.timestamp("us", tz="UTC"))


def binary_payload(frame, table: str) -> io.BytesIO:
    """``frame``'s columns (a DataFrame or an Arrow table; named as ``table``'s columns, in the
    order of the ``COPY`` column list) as a ``COPY ... (FORMAT binary)`` payload, encoded by
    pgpq (Arrow -> PostgreSQL's binary format, in Rust).

    Every column is first cast to the Arrow type of its column in ``table``
    (:data:`~marketflow_assets.schema.TABLES`; binary ``COPY`` has no type check of its own,
    so a mismatch would be misread, never refused), times to microseconds in UTC, and a NaN
    becomes NULL, as in :func:`csv_payload`. A 15,000-row ``price_indicators`` batch: 4.5 ms
    to encode and 75 ms in the server, against 12 ms and 94 ms as CSV (the server parses no
    text)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pgpq import ArrowToPostgresBinaryEncoder

    ddl = dict(TABLES[table][0])
    if table in SOURCE_TABLES:
        ddl[SOURCE_COLUMN] = SOURCE_COLUMN_DDL
    if not isinstance(frame, pa.Table):
        frame = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
    arrays = []
    for name, column in zip(frame.column_names, frame.columns, strict=True):
        kind = _binary_type(ddl[name])
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            column = _round_to_us(column)
        if column.type != kind:
            column = column.cast(kind)
        if pa.types.is_floating(kind) and column.length():
            nan = pc.is_nan(column)
            if pc.any(nan).as_py():
                column = pc.if_else(nan, pa.scalar(None, kind), column)
        arrays.append(column)
    table_ = pa.Table.from_arrays(arrays, names=frame.column_names)
    encoder = ArrowToPostgresBinaryEncoder(table_.schema)
    buf = io.BytesIO()
    buf.write(encoder.write_header())
    for batch in table_.to_batches():
        buf.write(encoder.write_batch(batch))
    buf.write(encoder.finish())
    buf.seek(0)
    return buf


def _utc_text(times):
    """A tz-aware Arrow time column as text, ``YYYY-MM-DD HH:MM:SS.fff...Z`` in UTC: what
    Arrow's CSV writer writes for it, in a tenth of the time (the writer looks up the zone for
    every value: 13.4 of the 20.6 ms a 15,000-coin ``coin_market`` payload took; this cast
    0.7 ms, writing its text 0.1 ms). Arrow keeps times as UTC instants, so the zone-less cast
    is the UTC wall time; a null stays null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wall = times.cast(pa.timestamp(times.type.unit)).cast(pa.string())
    return pc.binary_join_element_wise(wall, "Z", "")


class PostgresResource(dg.ConfigurableResource):
    """Connections to the Marketflow PostgreSQL database.

    ``url`` unset: ``MARKETFLOW_POSTGRES_URL`` when set, else the embedded PostgreSQL under
    ``$MARKETFLOW_DATA_DIR/postgres`` (default ``./data/postgres``), started - or reused when
    already running, e.g. by ``marketflow up`` - on the first connection, not when the
    definitions load.
    """

    url: str | None = Field(
        default=None,
        description=(
            "postgresql:// URL; default MARKETFLOW_POSTGRES_URL, else the embedded PostgreSQL"
            " under $MARKETFLOW_DATA_DIR/postgres"
        ),
    )

    def resolved_url(self) -> str:
        """The URL connections use (starts the embedded server when that is the one)."""
        if self.url:
            return self.url
        settings = load_settings()
        if settings.postgres_url:
            return settings.postgres_url
        if EMBEDDED_SERVER is None:
            raise dg.DagsterInvariantViolationError(
                "MARKETFLOW_POSTGRES_URL is not set and no embedded PostgreSQL was handed to the "
                "resources (definitions.py does that); set MARKETFLOW_POSTGRES_URL"
            )
        return EMBEDDED_SERVER(settings.postgres_dir)

    def display_url(self) -> str:
        """Where connections go, safe to log (password redacted; nothing is started)."""
        if self.url:
            return redact_url(self.url)
        settings = load_settings()
        if settings.postgres_url:
            return redact_url(settings.postgres_url)
        return f"embedded PostgreSQL in {settings.postgres_dir}"

    @contextmanager
    def get_connection(self) -> Iterator:
        """A psycopg2 connection; commits on success, rolls back on error, always closes."""
        import psycopg2

        conn = psycopg2.connect(self.resolved_url(), connect_timeout=10)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def ensure_tables(self) -> None:
        """Create the Marketflow tables and indexes if they do not exist (idempotent)."""
        with self.get_connection() as conn, conn.cursor() as cur:
            create_tables(cur)

    def fetch_indicator_state(
        self, coin_ids: Sequence[str] | None, start: datetime, lookback_start: datetime
    ) -> pd.DataFrame:
        """Per coin: last stored row before ``lookback_start`` (``ref_ts``, ``ref_price``) and
        last stored ``(ts, ema_3min)`` before ``start`` (``ema_ts``, ``ema_3min``).

        ``coin_ids=None`` means every stored coin. Coins without any stored row before ``start``
        are omitted. Columns are
        ``indicators.STATE_COLUMNS``; times are tz-aware UTC.
        """
        columns = list(INDICATOR_STATE_COLUMNS)
        if coin_ids is not None and not coin_ids:
            return pd.DataFrame(columns=columns)
        params = {
            "coins": list(coin_ids or []),
            "ref_before": _utc(lookback_start).to_pydatetime(),
            "ema_before": _utc(start).to_pydatetime(),
        }
        with self.get_connection() as conn, conn.cursor() as cur:
            cur.execute(STATE_SQL if coin_ids is not None else ALL_COINS_STATE_SQL, params)
            rows = cur.fetchall()
        frame = pd.DataFrame(rows, columns=columns)
        for col in ("ref_ts", "ema_ts"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        for col in ("ref_price", "ema_3min"):
            frame[col] = frame[col].astype("float64")
        return frame

    def replace_period(
        self,
        table: str,
        frame: pd.DataFrame,
        start: datetime,
        end: datetime,
        ts_column: str = "ts",
        after_write: Callable[[Any, int], None] | None = None,
    ) -> int:
        """Make ``table`` hold exactly ``frame``'s rows for ``ts_column`` in ``[start, end)``.

        One transaction: advisory lock per table, ``COPY`` into a temporary staging table,
        ``DELETE`` the period's rows that are not identical to a staged row (changed or vanished),
        then ``INSERT ... ON CONFLICT (key) DO NOTHING`` the staged rows (the rows left in the
        period are identical ones). Unchanged rows are not rewritten, so re-running it with the
        same frame leaves the table untouched (idempotent, and cheap for the streaming
        re-computation of the newest hour). Returns the number of rows inserted (new or changed).
        ``frame`` must only hold rows of the period (ValueError otherwise).
        ``after_write(cursor, changed)`` (optional) runs inside the same transaction, after the
        write, with the number of rows deleted plus inserted (0 = the table did not change).
        """
        columns = column_names(table)
        key = TABLES[table][1]
        if len(frame):
            times = pd.to_datetime(frame[ts_column], utc=True)
            if times.min() < _utc(start) or times.max() >= _utc(end):
                raise ValueError(
                    f"{table}: rows with {ts_column} outside [{start}, {end}) "
                    f"({times.min()} .. {times.max()})"
                )
        buf = csv_payload(frame.loc[:, list(columns)])
        col_list = ", ".join(columns)
        period = (_utc(start).to_pydatetime(), _utc(end).to_pydatetime())
        with self.get_connection() as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL TIME ZONE 'UTC'")
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"marketflow:{table}",))
            cur.execute(
                f"CREATE TEMP TABLE _stage_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            cur.copy_expert(f"COPY _stage_{table} ({col_list}) FROM STDIN WITH (FORMAT csv)", buf)
            same_key = " AND ".join(f"s.{k} = t.{k}" for k in key)
            compared = stored_column_names(table)  # + source: a live row is replaced
            same_row = f"({', '.join('s.' + c for c in compared)}) IS NOT DISTINCT FROM " + (
                f"({', '.join('t.' + c for c in compared)})"
            )
            # live rows newer than anything recomputed here are ahead of the raw data: kept. For
            # price_indicators "newer" is per coin: a Spark micro-batch may hold only part of a
            # poll, and the coins not yet in raw Parquet keep their live row at that ts.
            # (One indexed row per coin: a correlated max() over the unindexed stage per deleted
            # candidate would be quadratic.)
            if table == "price_indicators":
                cur.execute(
                    f"CREATE TEMP TABLE _newest_{table} ON COMMIT DROP AS SELECT coin_id, "
                    f"max({ts_column}) AS newest FROM _stage_{table} GROUP BY coin_id"
                )
                cur.execute(f"CREATE UNIQUE INDEX ON _newest_{table} (coin_id)")
                newest = f"(SELECT n.newest FROM _newest_{table} n WHERE n.coin_id = t.coin_id)"
            else:
                newest = f"(SELECT max(s.{ts_column}) FROM _stage_{table} s)"
            ahead = (
                f" AND NOT (t.{SOURCE_COLUMN} = '{SOURCE_LIVE}' AND t.{ts_column} > {newest})"
                if table in SOURCE_TABLES
                else ""
            )
            # rows of the period that are not in the new result, unchanged rows stay untouched
            cur.execute(
                f"DELETE FROM {table} t WHERE t.{ts_column} >= %s AND t.{ts_column} < %s "
                f"AND NOT EXISTS (SELECT 1 FROM _stage_{table} s WHERE {same_key} AND {same_row})"
                f"{ahead}",
                period,
            )
            deleted = cur.rowcount
            # what is left of the period is identical to its stage row: insert the rest
            cur.execute(
                f"INSERT INTO {table} ({col_list}) SELECT {col_list} FROM _stage_{table} "
                f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
            )
            inserted = cur.rowcount
            if after_write is not None:
                after_write(cur, deleted + inserted)
            return inserted

    def row_count(self, table: str) -> int:
        """Exact number of rows of ``table`` (one of ``schema.TABLES``); 0 when it is missing."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        with self.get_connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
            if not cur.fetchone()[0]:
                return 0
            cur.execute(f"SELECT count(*) FROM {table}")
            return int(cur.fetchone()[0])

    def estimated_row_count(self, table: str) -> int:
        """Rows of ``table`` as PostgreSQL estimates them (``pg_class.reltuples``, kept by
        autovacuum/ANALYZE: no scan); the exact count while the table was never analyzed."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        with self.get_connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (table,))
            row = cur.fetchone()
        if row is None:
            return 0
        if row[0] is None or row[0] < 0:
            return self.row_count(table)
        return int(row[0])

    def read_period(
        self,
        table: str,
        start: datetime,
        end: datetime,
        ts_column: str = "ts",
        columns: Sequence[str] | None = None,
        where: str = "",
    ) -> pd.DataFrame:
        """Rows of ``table`` with ``ts_column`` in ``[start, end)`` (times tz-aware UTC)."""
        columns = list(columns or column_names(table))
        extra = f" AND ({where})" if where else ""
        sql = (
            f"SELECT {', '.join(columns)} FROM {table} "
            f"WHERE {ts_column} >= %s AND {ts_column} < %s{extra}"
        )
        with self.get_connection() as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL TIME ZONE 'UTC'")
            cur.execute(sql, (_utc(start).to_pydatetime(), _utc(end).to_pydatetime()))
            frame = pd.DataFrame(cur.fetchall(), columns=columns)
        kinds = dict(TABLES[table][0])
        for name in columns:
            kind = kinds.get(name, "")
            if kind.startswith("timestamptz"):
                frame[name] = pd.to_datetime(frame[name], utc=True)
            elif kind.startswith("double"):
                frame[name] = frame[name].astype("float64")
        return frame
