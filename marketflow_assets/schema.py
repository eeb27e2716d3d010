"""The one definition of every schema in Marketflow.

* the Kafka message on ``crypto_prices`` (and its dead-letter twin),
* the raw Parquet dataset that the Spark job writes under ``$MARKETFLOW_DATA_DIR/raw_prices``,
* the PostgreSQL tables ``price_indicators`` and ``market_movers``.

Producers, the Spark job, the Dagster assets and the tests all import from here; nothing else
spells a column list. Engine-specific types (pyarrow, Spark) are built lazily so that importing
this module stays cheap.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# --------------------------------------------------------------------------------------------
# Kafka message: a CoinGecko /coins/markets record + ``ts`` (poll time, ISO-8601 UTC, identical
# for every coin of one poll) + ``schema_version``. Key = coin id (UTF-8).
# --------------------------------------------------------------------------------------------
MESSAGE_REQUIRED_FIELDS = ("id", "symbol", "current_price", "last_updated")
MESSAGE_STRING_FIELDS = ("id", "symbol", "name", "last_updated", "ts")
MESSAGE_NUMERIC_FIELDS = (
    "current_price",
    "market_cap",
    "market_cap_rank",
    "total_volume",
    "high_24h",
    "low_24h",
    "price_change_24h",
    "price_change_percentage_24h",
    "circulating_supply",
    "total_supply",
    "max_supply",
)
DLQ_FIELDS = ("reason", "payload", "ts", "schema_version")

# --------------------------------------------------------------------------------------------
# Raw Parquet dataset: hive-partitioned by ``date=YYYY-MM-DD`` (UTC date of ``ts``); at most one
# row per (id, ts). (name, logical type); logical types map to Arrow / Spark below.
# --------------------------------------------------------------------------------------------
RAW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "string"),
    ("symbol", "string"),
    ("name", "string"),
    ("current_price", "double"),
    ("market_cap", "double"),
    ("market_cap_rank", "long"),
    ("total_volume", "double"),
    ("high_24h", "double"),
    ("low_24h", "double"),
    ("price_change_percentage_24h", "double"),
    ("circulating_supply", "double"),
    ("last_updated", "timestamp"),
    ("ts", "timestamp"),
)
RAW_PARTITION_COLUMN = "date"
RAW_COLUMN_NAMES = tuple(name for name, _ in RAW_COLUMNS)
RAW_KEY = ("id", "ts")

# Rejected Kafka messages (unparsable JSON, missing key fields) kept by the Spark job.
REJECT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("topic", "string"),
    ("partition", "int"),
    ("offset", "long"),
    ("key", "string"),
    ("value", "string"),
    ("reason", "string"),
    ("rejected_at", "timestamp"),
)

_SPARK_TYPES = {
    "string": "STRING",
    "double": "DOUBLE",
    "long": "BIGINT",
    "int": "INT",
    "timestamp": "TIMESTAMP",
}


def spark_ddl(columns: tuple[tuple[str, str], ...] = RAW_COLUMNS) -> str:
    """Spark DDL string (``"id STRING, ..."``) for ``columns``."""
    return ", ".join(f"`{name}` {_SPARK_TYPES[kind]}" for name, kind in columns)


def message_spark_ddl() -> str:
    """Spark DDL used to parse the JSON value of a Kafka message (times still strings)."""
    cols = []
    for name, kind in RAW_COLUMNS:
        cols.append((name, "string" if kind == "timestamp" else kind))
    cols.append(("schema_version", "int"))
    return spark_ddl(tuple(cols))


def raw_arrow_schema():
    """pyarrow schema of the raw Parquet files (without the hive ``date`` column)."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "double": pa.float64(),
        "long": pa.int64(),
        "int": pa.int32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([(name, types[kind]) for name, kind in RAW_COLUMNS])


# --------------------------------------------------------------------------------------------
# PostgreSQL tables.
# --------------------------------------------------------------------------------------------
INDICATOR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("coin_id", "text NOT NULL"),
    ("symbol", "text"),
    ("ts", "timestamptz NOT NULL"),
    ("price", "double precision NOT NULL"),
    ("change_1min", "double precision"),
    ("change_5min", "double precision"),
    ("sma_5min", "double precision"),
    ("ema_3min", "double precision"),
    ("volatility_5min", "double precision"),
)
INDICATOR_KEY = ("coin_id", "ts")

MOVER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("snapshot_ts", "timestamptz NOT NULL"),
    ("direction", "text NOT NULL CHECK (direction IN ('gainer', 'loser'))"),
    ("rank", "int NOT NULL CHECK (rank BETWEEN 1 AND 5)"),
    ("coin_id", "text NOT NULL"),
    ("symbol", "text"),
    ("change_5min", "double precision NOT NULL"),
    ("price", "double precision NOT NULL"),
)
MOVER_KEY = ("snapshot_ts", "direction", "rank")

TABLES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "price_indicators": (INDICATOR_COLUMNS, INDICATOR_KEY),
    "market_movers": (MOVER_COLUMNS, MOVER_KEY),
}


def column_names(table: str) -> tuple[str, ...]:
    return tuple(name for name, _ in TABLES[table][0])


def create_table_sql(table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` statement for one of :data:`TABLES`."""
    columns, key = TABLES[table]
    body = ",\n  ".join(f"{name} {kind}" for name, kind in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} (\n  {body},\n  PRIMARY KEY ({', '.join(key)})\n)"


def create_all_sql() -> list[str]:
    """DDL for every table plus the secondary indexes queries rely on."""
    return [
        *(create_table_sql(t) for t in TABLES),
        "CREATE INDEX IF NOT EXISTS price_indicators_ts_idx ON price_indicators (ts)",
    ]


# --------------------------------------------------------------------------------------------
# Dagster asset keys (single-component keys named after the dataset / table they stand for).
# --------------------------------------------------------------------------------------------
RAW_PRICES_ASSET = "raw_prices"
PRICE_INDICATORS_ASSET = "price_indicators"
MARKET_MOVERS_ASSET = "market_movers"
#: asset key -> (PostgreSQL table, its time column) for the table-backed assets.
ASSET_TABLES = {
    PRICE_INDICATORS_ASSET: ("price_indicators", "ts"),
    MARKET_MOVERS_ASSET: ("market_movers", "snapshot_ts"),
}
#: Columns of ``price_indicators`` that ``market_movers`` reads.
MOVER_INPUT_COLUMNS = ("coin_id", "symbol", "ts", "price", "change_5min")
#: Raw columns the indicators read, and the raw columns the raw_prices checks read.
INDICATOR_INPUT_COLUMNS = ("id", "symbol", "ts", "current_price")
RAW_CHECK_COLUMNS = ("id", "current_price", "ts")
#: Per-coin state an incremental refresh reads back from ``price_indicators``: the last stored
#: row at least 300 s before the period (``ref_*``) and the last ``(ts, ema_3min)`` before it.
INDICATOR_STATE_COLUMNS = ("coin_id", "ref_ts", "ref_price", "ema_ts", "ema_3min")
