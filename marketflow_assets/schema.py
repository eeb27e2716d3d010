"""The one definition of every schema in Marketflow.

* the Kafka message on ``crypto_prices`` (and its dead-letter twin),
* the raw Parquet dataset that the Spark job writes under ``$MARKETFLOW_DATA_DIR/raw_prices``,
* the PostgreSQL tables ``price_indicators``, ``market_movers``, ``price_forecasts`` and
  ``forecast_evaluation``.

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
#: The other fields of a CoinGecko ``/coins/markets`` record, which the ingest publishes as they
#: are (the contract refuses only a NaN or an infinity in them), and ``schema_version``: each
#: with its JSON type, so that a whole message can be read typed in bulk
#: (``contract._arrow_layout``; a batch with a message with any other field is read by orjson).
MESSAGE_CARRIED_FIELDS: tuple[tuple[str, str], ...] = (
    ("image", "string"),
    ("fully_diluted_valuation", "double"),
    ("market_cap_change_24h", "double"),
    ("market_cap_change_percentage_24h", "double"),
    ("ath", "double"),
    ("ath_change_percentage", "double"),
    ("ath_date", "string"),
    ("atl", "double"),
    ("atl_change_percentage", "double"),
    ("atl_date", "string"),
    ("roi", "roi"),
    ("schema_version", "double"),
)
DLQ_FIELDS = ("reason", "detail", "payload", "ts", "schema_version")

# --------------------------------------------------------------------------------------------
# raw_prices Delta table: partitioned by ``date`` (UTC date of ``ts``); at most one
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


def raw_table_schema():
    """pyarrow schema of the ``raw_prices`` Delta table: the raw columns plus the ``date``
    partition column (UTC date of ``ts``)."""
    import pyarrow as pa

    return raw_arrow_schema().append(pa.field(RAW_PARTITION_COLUMN, pa.date32()))


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

# Forecasts (SPEC "Forecast tables"): the promoted model's forecasts per coin and origin, and one
# evaluation row per evaluation x model x horizon. Columns after ``promoted`` are extras.
FORECAST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("coin_id", "text NOT NULL"),
    ("origin_ts", "timestamptz NOT NULL"),
    ("horizon_s", "int NOT NULL CHECK (horizon_s >= 300)"),
    ("target_ts", "timestamptz NOT NULL"),
    ("predicted_price", "double precision NOT NULL"),
    ("lower_80", "double precision NOT NULL"),
    ("upper_80", "double precision NOT NULL"),
    ("model", "text NOT NULL"),
)
FORECAST_KEY = ("coin_id", "origin_ts", "horizon_s")

EVALUATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("evaluated_at", "timestamptz NOT NULL"),
    ("model", "text NOT NULL"),
    ("horizon_s", "int NOT NULL"),
    ("n", "int NOT NULL"),
    ("mae", "double precision"),
    ("mase", "double precision"),
    ("directional_accuracy", "double precision"),
    ("coverage_80", "double precision"),
    ("promoted", "boolean NOT NULL"),
    ("learned", "boolean"),
    ("dm_stat", "double precision"),
    ("dm_pvalue", "double precision"),
    ("q_lower", "double precision"),
    ("q_upper", "double precision"),
    ("reason", "text"),
)
EVALUATION_KEY = ("evaluated_at", "model", "horizon_s")
# Pipeline history for the dashboard's "Pipeline" page: every check evaluation the monitoring
# sensor records and every alert the alert sensor sends
# (``marketflow_assets/defs/monitoring/history.py``).
# ``check_key`` = "<asset>:<check>"; ``metadata`` = the evaluation's metadata as JSON.
CHECK_RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("check_key", "text NOT NULL"),
    ("evaluated_at", "timestamptz NOT NULL"),
    ("asset_key", "text NOT NULL"),
    ("check_name", "text NOT NULL"),
    ("passed", "boolean NOT NULL"),
    ("severity", "text NOT NULL"),
    ("description", "text"),
    ("metadata", "jsonb"),
)
CHECK_RESULT_KEY = ("check_key", "evaluated_at")

ALERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("alerted_at", "timestamptz NOT NULL"),
    ("alert_key", "text NOT NULL"),
    ("previous_state", "text"),
    ("state", "text NOT NULL"),
    ("message", "text NOT NULL"),
)
ALERT_KEY = ("alerted_at", "alert_key")

# The newest market data of each coin: CoinGecko's own fields of its newest record, for the
# dashboard's market table (rank, name, market cap, 24 h volume / high / low / change). Written by
# the live path with each batch and by each ``price_indicators`` refresh (``market.py``).
COIN_MARKET_COLUMNS: tuple[tuple[str, str], ...] = (
    ("coin_id", "text NOT NULL"),
    ("symbol", "text"),
    ("name", "text"),
    ("market_cap_rank", "bigint"),
    ("price", "double precision"),
    ("market_cap", "double precision"),
    ("total_volume", "double precision"),
    ("high_24h", "double precision"),
    ("low_24h", "double precision"),
    ("change_24h", "double precision"),
    ("ts", "timestamptz NOT NULL"),
)
COIN_MARKET_KEY = ("coin_id",)
#: Storage parameters per table. ``coin_market`` is rewritten whole at every poll (one row per
#: coin): half of each page left free lets PostgreSQL update a row in place (HOT: no new index
#: entry): ~35 % less time per 15,000-coin upsert, and no index bloat.
TABLE_STORAGE: dict[str, str] = {"coin_market": "fillfactor = 50"}

# Each poll's market size of each coin: CoinGecko's 24 h volume and market cap at ``ts``, for the
# coin view's volume pane (CoinGecko reports a rolling 24 h volume, not the volume traded between
# two polls). Written beside ``coin_market`` by the same writers (``market.py``).
COIN_MARKET_HISTORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("coin_id", "text NOT NULL"),
    ("ts", "timestamptz NOT NULL"),
    ("total_volume", "double precision"),
    ("market_cap", "double precision"),
)
COIN_MARKET_HISTORY_KEY = ("coin_id", "ts")

# Price alerts sent by the live path, one row per crossing (``marketflow_assets/price_alerts.py``).
PRICE_ALERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("alerted_at", "timestamptz NOT NULL"),
    ("rule", "text NOT NULL"),
    ("coin_id", "text NOT NULL"),
    ("ts", "timestamptz NOT NULL"),
    ("value", "double precision"),
    ("message", "text NOT NULL"),
)
PRICE_ALERT_KEY = ("rule", "coin_id", "ts")

# Failed runs, recorded by the alert sensor as it sees them (every failure, not only the first
# of a streak): the Pipeline page lists those of the last 24 hours with a link to the run.
# ``launched_by`` = the run's ``marketflow/launched_by`` (``defs/common/launch.py``).
RUN_FAILURE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "text NOT NULL"),
    ("failed_at", "timestamptz NOT NULL"),
    ("job_name", "text NOT NULL"),
    ("launched_by", "text"),
    ("partition", "text"),
    ("error", "text"),
)
RUN_FAILURE_KEY = ("run_id",)

TABLES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "price_indicators": (INDICATOR_COLUMNS, INDICATOR_KEY),
    "market_movers": (MOVER_COLUMNS, MOVER_KEY),
    "price_forecasts": (FORECAST_COLUMNS, FORECAST_KEY),
    "forecast_evaluation": (EVALUATION_COLUMNS, EVALUATION_KEY),
    "check_results": (CHECK_RESULT_COLUMNS, CHECK_RESULT_KEY),
    "alert_history": (ALERT_COLUMNS, ALERT_KEY),
    "run_failures": (RUN_FAILURE_COLUMNS, RUN_FAILURE_KEY),
    "coin_market": (COIN_MARKET_COLUMNS, COIN_MARKET_KEY),
    "coin_market_history": (COIN_MARKET_HISTORY_COLUMNS, COIN_MARKET_HISTORY_KEY),
    "price_alert_events": (PRICE_ALERT_COLUMNS, PRICE_ALERT_KEY),
}


# Provenance of a row of ``price_indicators`` / ``market_movers``: ``'dagster'`` (the exact
# recompute from raw Parquet, whose values win) or ``'live'`` (the live consumer reading the Kafka
# topic, ``marketflow_assets/live``). Not part of :func:`column_names` (the computed columns):
# writers that do not name it get ``'dagster'``. Added to existing tables by ``ALTER TABLE``.
SOURCE_COLUMN = "source"
SOURCE_LIVE = "live"
SOURCE_DAGSTER = "dagster"
SOURCE_COLUMN_DDL = (
    f"text NOT NULL DEFAULT '{SOURCE_DAGSTER}' "
    f"CHECK ({SOURCE_COLUMN} IN ('{SOURCE_LIVE}', '{SOURCE_DAGSTER}'))"
)
#: Tables that carry :data:`SOURCE_COLUMN`.
SOURCE_TABLES = ("price_indicators", "market_movers")


def column_names(table: str) -> tuple[str, ...]:
    """The computed columns of ``table`` (without :data:`SOURCE_COLUMN`)."""
    return tuple(name for name, _ in TABLES[table][0])


def stored_column_names(table: str) -> tuple[str, ...]:
    """Every column of ``table`` as stored (:func:`column_names` + ``source`` where present)."""
    extra = (SOURCE_COLUMN,) if table in SOURCE_TABLES else ()
    return column_names(table) + extra


#: Columns a table's primary-key index carries beside its key (``INCLUDE``). ``price_indicators``:
#: a coin's series over up to 7 days is an index-only scan of the key (the dashboard; the heap
#: holds each poll's coins together, so without it 7 days of one coin touch ~20k heap pages),
#: with no second ``(coin_id, ts)`` index to keep up at every insert: a 15,000-row COPY took 30 %
#: less server time (the second index had cost more than the heap rows). Tables created before
#: keep a plain key and get the separate index (:func:`create_all_sql`).
KEY_INCLUDE: dict[str, tuple[str, ...]] = {
    "price_indicators": (
        "price",
        "sma_5min",
        "ema_3min",
        "volatility_5min",
        "change_1min",
        "change_5min",
    ),
}


def create_table_sql(table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` statement for one of :data:`TABLES`."""
    columns, key = TABLES[table]
    if table in SOURCE_TABLES:
        columns = (*columns, (SOURCE_COLUMN, SOURCE_COLUMN_DDL))
    body = ",\n  ".join(f"{name} {kind}" for name, kind in columns)
    include = f" INCLUDE ({', '.join(KEY_INCLUDE[table])})" if table in KEY_INCLUDE else ""
    storage = f" WITH ({TABLE_STORAGE[table]})" if table in TABLE_STORAGE else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n  {body},\n"
        f"  PRIMARY KEY ({', '.join(key)}){include}\n)" + storage
    )


def _covering_index_sql(table: str, name: str) -> str:
    """For a ``table`` created before its key carried :data:`KEY_INCLUDE`: the same columns in
    an index of their own (guarded: nothing when the key carries them)."""
    key, include = ", ".join(TABLES[table][1]), ", ".join(KEY_INCLUDE[table])
    return (
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = "
        f"to_regclass('{table}') AND indisprimary AND indnatts > indnkeyatts) THEN "
        f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({key}) INCLUDE ({include}); "
        "END IF; END $$"
    )


# Bookkeeping of the incremental refresh (``defs/indicators/incremental.py``), one row per hourly
# partition: the raw files already folded into ``price_indicators`` (names relative to
# ``raw_prices/``; NULL = recompute the whole hour next time), the table's newest ``ts`` in the
# hour after that write (a mismatch means the table changed behind the refresh's back), and
# where ``market_movers`` must be recomputed from (NULL = up to date) plus its newest snapshot.
REFRESH_LEDGER_TABLE = "indicator_refresh_ledger"
REFRESH_LEDGER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("partition_start", "timestamptz NOT NULL"),
    ("raw_files", "text[]"),
    ("indicators_newest_ts", "timestamptz"),
    ("movers_from", "timestamptz"),
    ("movers_newest_ts", "timestamptz"),
    ("updated_at", "timestamptz NOT NULL DEFAULT now()"),
)
REFRESH_LEDGER_KEY = ("partition_start",)
#: Tables that hold derived bookkeeping only (dropping them costs one full recompute per hour).
# Kafka offsets of the live consumer (``marketflow_assets/live``): the next offset to read per
# partition, committed in the same transaction as the rows computed from the records before it.
LIVE_OFFSETS_TABLE = "live_offsets"
LIVE_OFFSETS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("topic", "text NOT NULL"),
    ("partition", "int NOT NULL"),
    ("next_offset", "bigint NOT NULL"),
    ("updated_at", "timestamptz NOT NULL DEFAULT now()"),
)
LIVE_OFFSETS_KEY = ("topic", "partition")
STATE_TABLES = (REFRESH_LEDGER_TABLE, LIVE_OFFSETS_TABLE)


def distinct_values_cte(name: str, table: str, column: str) -> str:
    """``WITH RECURSIVE <name>(<column>) AS (...)``: the distinct values of ``table.column`` by a
    loose index scan of an index led by ``column`` (one probe per value, so the cost follows the
    number of values, not of rows). Its last row is a NULL: filter ``WHERE <column> IS NOT
    NULL``."""
    return f"""
WITH RECURSIVE {name}({column}) AS (
    (SELECT {column} FROM {table} ORDER BY {column} LIMIT 1)
    UNION ALL
    SELECT (SELECT t.{column} FROM {table} t WHERE t.{column} > prev.{column}
            ORDER BY t.{column} LIMIT 1)
    FROM {name} prev WHERE prev.{column} IS NOT NULL
)
"""


def _reloptions(params: str) -> str:
    """``fillfactor = 50, ...`` as PostgreSQL lists them in ``pg_class.reloptions``:
    ``'fillfactor=50', ...`` (SQL string literals)."""
    return ", ".join(f"'{option.replace(' ', '')}'" for option in params.split(","))


def create_all_sql() -> list[str]:
    """DDL for every table plus the secondary indexes queries rely on."""
    body = ",\n  ".join(f"{name} {kind}" for name, kind in REFRESH_LEDGER_COLUMNS)
    offsets = ",\n  ".join(f"{name} {kind}" for name, kind in LIVE_OFFSETS_COLUMNS)
    return [
        *(create_table_sql(t) for t in TABLES),
        "CREATE INDEX IF NOT EXISTS price_indicators_ts_idx ON price_indicators (ts)",
        "CREATE INDEX IF NOT EXISTS price_forecasts_origin_idx ON price_forecasts (origin_ts)",
        # dashboard (marketflow_assets/dashboard/queries.py): a coin's series as an index-only
        # scan (KEY_INCLUDE; an index of its own in tables made before), the newest checks first
        _covering_index_sql("price_indicators", "price_indicators_coin_series_idx"),
        "CREATE INDEX IF NOT EXISTS check_results_evaluated_at_idx ON check_results (evaluated_at)",
        "CREATE INDEX IF NOT EXISTS run_failures_failed_at_idx ON run_failures (failed_at)",
        "CREATE INDEX IF NOT EXISTS price_alert_events_alerted_at_idx "
        "ON price_alert_events (alerted_at)",
        f"CREATE TABLE IF NOT EXISTS {REFRESH_LEDGER_TABLE} (\n  {body},\n"
        f"  PRIMARY KEY ({', '.join(REFRESH_LEDGER_KEY)})\n)",
        # tables created before the live path existed get the provenance column (rows: dagster)
        # (guarded: ALTER TABLE takes an exclusive lock even when the column exists)
        *(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM information_schema.columns "
            f"WHERE table_schema = current_schema() AND table_name = '{t}' "
            f"AND column_name = '{SOURCE_COLUMN}') THEN "
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {SOURCE_COLUMN} {SOURCE_COLUMN_DDL}; "
            "END IF; END $$"
            for t in SOURCE_TABLES
        ),
        # tables created before their storage parameters were set get them (for the pages
        # written from now on; guarded: ALTER TABLE locks the table even when nothing changes)
        *(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = "
            f"to_regclass('{t}') AND ARRAY[{_reloptions(params)}]::text[] <@ reloptions) THEN "
            f"ALTER TABLE {t} SET ({params}); END IF; END $$"
            for t, params in TABLE_STORAGE.items()
        ),
        # an index of the live rows by ts, made by earlier versions for the comparison before
        # Dagster replaces a period's rows (a range of ``ts``: price_indicators_ts_idx serves
        # it): every live insert paid for it (15,000 rows: ~15 % of the COPY), so it goes
        # (guarded: DROP INDEX locks the table even when nothing is dropped; IF EXISTS: two
        # processes starting at once may both see it)
        "DO $$ BEGIN IF to_regclass('price_indicators_live_idx') IS NOT NULL THEN "
        "DROP INDEX IF EXISTS price_indicators_live_idx; END IF; END $$",
        f"CREATE TABLE IF NOT EXISTS {LIVE_OFFSETS_TABLE} (\n  {offsets},\n"
        f"  PRIMARY KEY ({', '.join(LIVE_OFFSETS_KEY)})\n)",
    ]


# --------------------------------------------------------------------------------------------
# Dagster asset keys (single-component keys named after the dataset / table they stand for).
# --------------------------------------------------------------------------------------------
RAW_PRICES_ASSET = "raw_prices"
PRICE_INDICATORS_ASSET = "price_indicators"
MARKET_MOVERS_ASSET = "market_movers"
FORECAST_EVALUATION_ASSET = "forecast_evaluation"
FORECAST_MODEL_ASSET = "forecast_model"
PRICE_FORECASTS_ASSET = "price_forecasts"
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


def create_tables(cursor) -> None:
    """Run :func:`create_all_sql` on a DB-API cursor (idempotent)."""
    for statement in create_all_sql():
        cursor.execute(statement)
