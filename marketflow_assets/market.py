"""The newest market data of each coin (table ``coin_market``, columns in :mod:`.schema`) and
each poll's 24 h volume and market cap (table ``coin_market_history``).

:func:`market_records` turns raw records (the ``raw_prices`` columns: CoinGecko's fields plus
``ts``) into rows of ``coin_market``'s columns, ``current_price`` as ``price`` and
``price_change_percentage_24h`` as ``change_24h`` (the first record of an ``(id, ts)`` counts, as
in the raw table); :func:`write_coin_market` stages them once, upserts each coin's newest with
:data:`UPSERT_SQL` - a row only ever moves forward in time: a late, duplicate or replayed record
never overwrites what is there - and adds them to the history, which keeps the first row of each
``(coin_id, ts)``.
"""

from __future__ import annotations

import pandas as pd

from marketflow_assets.schema import column_names

COLUMNS = column_names("coin_market")
#: The raw columns a row is made of.
RAW_SOURCE_COLUMNS = (
    "id",
    "symbol",
    "name",
    "market_cap_rank",
    "current_price",
    "market_cap",
    "total_volume",
    "high_24h",
    "low_24h",
    "price_change_percentage_24h",
    "ts",
)
#: The raw columns a history row is made of.
HISTORY_SOURCE_COLUMNS = ("id", "ts", "total_volume", "market_cap")
_RENAME = {"id": "coin_id", "current_price": "price", "price_change_percentage_24h": "change_24h"}

#: The records of one write, staged once: every ``(coin, ts)`` of it (no key), as
#: ``coin_market``'s columns.
STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS _market_records (LIKE coin_market) ON COMMIT DELETE ROWS"
)
#: Each staged coin's newest record into ``coin_market``, never moving a row back in time.
UPSERT_SQL = (
    f"INSERT INTO coin_market ({', '.join(COLUMNS)}) "
    f"SELECT DISTINCT ON (coin_id) {', '.join(COLUMNS)} FROM _market_records "
    "ORDER BY coin_id, ts DESC "
    "ON CONFLICT (coin_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "coin_id")
    + " WHERE EXCLUDED.ts > coin_market.ts"
)

HISTORY_COLUMNS = column_names("coin_market_history")
HISTORY_STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS _market_history (LIKE coin_market_history) "
    "ON COMMIT DELETE ROWS"
)
HISTORY_INSERT_SQL = (
    f"INSERT INTO coin_market_history ({', '.join(HISTORY_COLUMNS)}) "
    f"SELECT {', '.join(HISTORY_COLUMNS)} FROM _market_history "
    "ON CONFLICT (coin_id, ts) DO NOTHING"
)
#: The staged records of :data:`STAGE_SQL` into ``coin_market_history``.
HISTORY_FROM_STAGE_SQL = (
    f"INSERT INTO coin_market_history ({', '.join(HISTORY_COLUMNS)}) "
    f"SELECT {', '.join(HISTORY_COLUMNS)} FROM _market_records "
    "ON CONFLICT (coin_id, ts) DO NOTHING"
)


def _first_records(raw, columns=RAW_SOURCE_COLUMNS):
    """``raw``'s records with a coin id, the first of each ``(id, ts)`` (as in the raw table),
    as an Arrow table of ``columns`` with ``ts`` as UTC times. ``raw``: a DataFrame or an Arrow
    table of raw columns (the live path's records stay in Arrow: no Python object per value)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(raw, pd.DataFrame):
        frame = raw.loc[:, list(columns)]
        # cache=False: see advance_indicators
        frame = frame.assign(ts=pd.to_datetime(frame["ts"], utc=True, cache=False))
        table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
    else:
        table = raw.select(list(columns))
    table = table.filter(pc.is_valid(table["id"]))
    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    firsts = (
        table.select(["id", "ts"])
        .append_column("row", rows)
        .group_by(["id", "ts"], use_threads=False)
        .aggregate([("row", "min")])
    )
    if firsts.num_rows < table.num_rows:  # a repeated (id, ts): its first record counts
        kept = firsts["row_min"]
        table = table.take(kept.take(pc.sort_indices(kept)))  # in their order in ``raw``
    return table


def _renamed(table):
    return table.rename_columns([_RENAME.get(c, c) for c in table.column_names])


def market_records(raw):
    """Every ``(coin, ts)`` of ``raw`` (a DataFrame or an Arrow table of raw columns; its first
    record) as an Arrow table of :data:`COLUMNS`; each coin's newest of them is its
    ``coin_market`` row."""
    import pyarrow as pa

    table = _renamed(_first_records(raw))
    rank = table.schema.get_field_index("market_cap_rank")
    table = table.set_column(rank, "market_cap_rank", table["market_cap_rank"].cast(pa.int64()))
    return table.select(list(COLUMNS))


def market_history_rows(raw):
    """One row per ``(coin, ts)`` of ``raw`` in :data:`HISTORY_COLUMNS` order (Arrow)."""
    table = _renamed(_first_records(raw, HISTORY_SOURCE_COLUMNS)).select(list(HISTORY_COLUMNS))
    return table.sort_by([("coin_id", "ascending"), ("ts", "ascending")])


def write_market_history(cur, raw) -> int:
    """Add each record's volume and market cap of ``raw`` to ``coin_market_history`` on ``cur``
    (in the caller's transaction; a stored ``(coin_id, ts)`` is kept); returns the rows
    offered."""
    from marketflow_assets.resources.postgres import csv_payload

    rows = market_history_rows(raw)
    if not rows.num_rows:
        return 0
    cur.execute(HISTORY_STAGE_SQL)
    cur.copy_expert(
        f"COPY _market_history ({', '.join(HISTORY_COLUMNS)}) FROM STDIN WITH (FORMAT csv)",
        csv_payload(rows),
    )
    cur.execute(HISTORY_INSERT_SQL)
    return rows.num_rows


def write_coin_market(cur, raw, history: bool = True) -> int:
    """Upsert the coins of ``raw`` (raw records: a DataFrame or an Arrow table) into
    ``coin_market`` (each coin's newest record; and, with
    ``history``, add its records to ``coin_market_history``) on ``cur``, in the caller's
    transaction: the records are staged once for both. Returns the ``coin_market`` rows offered
    (one per coin)."""
    import pyarrow.compute as pc

    from marketflow_assets.resources.postgres import csv_payload

    records = market_records(raw)
    if not records.num_rows:
        return 0
    cur.execute(STAGE_SQL)
    cur.copy_expert(
        f"COPY _market_records ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)",
        csv_payload(records),
    )
    if history:
        cur.execute(HISTORY_FROM_STAGE_SQL)
    cur.execute(UPSERT_SQL)
    return pc.count_distinct(records["coin_id"]).as_py()
