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


def _first_records(raw: pd.DataFrame, columns=RAW_SOURCE_COLUMNS) -> pd.DataFrame:
    """``raw``'s records with a coin id, ``ts`` as UTC times, the first of each ``(id, ts)``
    (as in the raw table)."""
    frame = raw.loc[raw["id"].notna(), list(columns)].copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, cache=False)  # see advance_indicators
    return frame.drop_duplicates(["id", "ts"], keep="first")


def market_records(raw: pd.DataFrame) -> pd.DataFrame:
    """Every ``(coin, ts)`` of ``raw`` (its first record) as :data:`COLUMNS`; each coin's newest
    of them is its ``coin_market`` row."""
    if raw.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
    out = _first_records(raw).rename(columns=_RENAME)
    out["market_cap_rank"] = out["market_cap_rank"].astype("Int64")
    return out.loc[:, list(COLUMNS)].reset_index(drop=True)


def market_history_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per ``(coin, ts)`` of ``raw`` in :data:`HISTORY_COLUMNS` order."""
    if raw.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in HISTORY_COLUMNS})
    out = _first_records(raw, HISTORY_SOURCE_COLUMNS).rename(columns=_RENAME)
    return out.loc[:, list(HISTORY_COLUMNS)].sort_values(["coin_id", "ts"]).reset_index(drop=True)


def write_market_history(cur, raw: pd.DataFrame) -> int:
    """Add each record's volume and market cap of ``raw`` to ``coin_market_history`` on ``cur``
    (in the caller's transaction; a stored ``(coin_id, ts)`` is kept); returns the rows
    offered."""
    from marketflow_assets.resources.postgres import csv_payload

    rows = market_history_rows(raw)
    if rows.empty:
        return 0
    cur.execute(HISTORY_STAGE_SQL)
    cur.copy_expert(
        f"COPY _market_history ({', '.join(HISTORY_COLUMNS)}) FROM STDIN WITH (FORMAT csv)",
        csv_payload(rows),
    )
    cur.execute(HISTORY_INSERT_SQL)
    return len(rows)


def write_coin_market(cur, raw: pd.DataFrame, history: bool = True) -> int:
    """Upsert the coins of ``raw`` into ``coin_market`` (each coin's newest record; and, with
    ``history``, add its records to ``coin_market_history``) on ``cur``, in the caller's
    transaction: the records are staged once for both. Returns the ``coin_market`` rows offered
    (one per coin)."""
    from marketflow_assets.resources.postgres import csv_payload

    records = market_records(raw)
    if records.empty:
        return 0
    cur.execute(STAGE_SQL)
    cur.copy_expert(
        f"COPY _market_records ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)",
        csv_payload(records),
    )
    if history:
        cur.execute(HISTORY_FROM_STAGE_SQL)
    cur.execute(UPSERT_SQL)
    return int(records["coin_id"].nunique())
