"""Every SQL statement of the analyst dashboard, parameterised, in one place.

Pages never spell SQL: they call the functions below, which take an open psycopg2 connection
and return pandas DataFrames (times tz-aware UTC). Identifiers are fixed here; values always
travel as parameters. Each statement is served from an index (``schema.create_all_sql``):

========================  =====================================================================
query                     index used
========================  =====================================================================
latest/previous snapshot  market_movers primary key (snapshot_ts, direction, rank): max / < x
movers                    market_movers primary key; price_indicators_ts_idx for the previous
                          snapshot's full ranking (one snapshot = one ts)
snapshot coins            price_indicators_ts_idx (ts = snapshot)
newest indicator ts       price_indicators_ts_idx (max)
coins                     price_indicators primary key (coin_id, ts): loose index scan + one
                          backward probe per coin
coin candles              price_indicators primary key, covering (index-only range scan);
                          coin_market_history primary key (the 24 h volume at each row)
coin latest rows          price_indicators primary key range, backwards, LIMIT
rows per poll             price_indicators_ts_idx range (index-only)
check results (latest)    check_results primary key (check_key, evaluated_at): loose scan
check results (recent)    check_results_evaluated_at_idx
alerts                    alert_history primary key (alerted_at, alert_key)
forecasts                 price_forecasts primary key (coin_id, origin_ts, horizon_s)
forecast evaluation       forecast_evaluation, newest evaluated_at
market table              price_indicators_ts_idx (ts = snapshot); coin_market primary key;
                          price_indicators primary key, one backward probe per coin (1 h ago)
sparklines                price_indicators primary key, covering (index-only, a few coins)
recent poll times         price_indicators_ts_idx (newest row), primary key range of its coin
failed runs               run_failures_failed_at_idx
price alerts              price_alert_events_alerted_at_idx (newest first, LIMIT)
========================  =====================================================================

Missing tables raise :class:`NoData` (the page says so); connection problems raise
:class:`DatabaseUnavailable`. Both carry a one-line message fit for the page.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from marketflow_assets.schema import distinct_values_cte
from marketflow_assets.settings import redact_url

#: Coin-page ranges (label -> length); the page offers 15 min … 7 days.
RANGES: dict[str, timedelta] = {
    "15 min": timedelta(minutes=15),
    "1 hour": timedelta(hours=1),
    "6 hours": timedelta(hours=6),
    "24 hours": timedelta(hours=24),
    "7 days": timedelta(days=7),
}
LATEST_ROWS_LIMIT = 50
ROWS_PER_POLL_WINDOW = timedelta(hours=2)
HISTORY_LIMIT = 100

SQL: dict[str, str] = {
    "latest_snapshot": "SELECT max(snapshot_ts) FROM market_movers",
    "previous_snapshot": (
        "SELECT max(snapshot_ts) FROM market_movers WHERE snapshot_ts < %(snapshot)s"
    ),
    # Movers of one snapshot with each coin's rank among all coins at the previous snapshot
    # (same direction, same ordering and tie rule as SPEC's movers).
    "movers": """
        WITH prev AS (
            SELECT coin_id,
                   row_number() OVER (ORDER BY change_5min DESC, coin_id) AS gainer_rank,
                   row_number() OVER (ORDER BY change_5min ASC, coin_id) AS loser_rank
            FROM price_indicators
            WHERE ts = %(previous)s AND change_5min IS NOT NULL
        )
        SELECT m.direction, m.rank, m.coin_id, m.symbol, m.price, m.change_5min,
               CASE m.direction WHEN 'gainer' THEN prev.gainer_rank ELSE prev.loser_rank END
                   AS previous_rank
        FROM market_movers m LEFT JOIN prev ON prev.coin_id = m.coin_id
        WHERE m.snapshot_ts = %(snapshot)s
        ORDER BY m.direction, m.rank""",
    "snapshot_coins": """
        SELECT p.coin_id, p.symbol, p.price, p.change_5min, p.volatility_5min, m.market_cap
        FROM price_indicators p LEFT JOIN coin_market m ON m.coin_id = p.coin_id
        WHERE p.ts = %(snapshot)s ORDER BY p.coin_id""",
    "newest_indicator_ts": "SELECT max(ts) FROM price_indicators",
    # The market table: every coin of a snapshot with its CoinGecko market data (coin_market)
    # and its price an hour earlier (the newest at or before; one index lookup per coin).
    "market_table": """
        SELECT p.coin_id, p.symbol, m.name, m.market_cap_rank, p.price, p.change_1min,
               p.change_5min, h.price AS price_1h_ago, m.change_24h, m.market_cap,
               m.total_volume, m.high_24h, m.low_24h, p.volatility_5min
        FROM price_indicators p
        LEFT JOIN coin_market m ON m.coin_id = p.coin_id
        LEFT JOIN LATERAL (
            SELECT q.price FROM price_indicators q
            WHERE q.coin_id = p.coin_id AND q.ts <= %(hour_ago)s
            ORDER BY q.ts DESC LIMIT 1
        ) h ON true
        WHERE p.ts = %(snapshot)s
        ORDER BY m.market_cap_rank NULLS LAST, p.coin_id""",
    # The last hour of prices of a few coins (the market table's sparklines).
    "sparklines": """
        SELECT coin_id, (extract(epoch FROM ts) * 1000000)::int8 AS ts_us, price
        FROM price_indicators
        WHERE coin_id = ANY(%(coins)s) AND ts > %(start)s AND ts <= %(end)s
        ORDER BY coin_id, ts""",
    # the poll times of the coin of the newest row over a window (the warm-up states): one
    # index range scan whatever the number of coins
    "recent_poll_times": """
        WITH newest AS (SELECT coin_id, ts FROM price_indicators ORDER BY ts DESC LIMIT 1)
        SELECT p.ts FROM price_indicators p, newest n
        WHERE p.coin_id = n.coin_id AND p.ts >= n.ts - %(window)s ORDER BY p.ts""",
    # which path wrote the newest row (live consumer or Dagster recompute), and its ts
    "latest_row_source": "SELECT source, ts FROM price_indicators ORDER BY ts DESC LIMIT 1",
    "coins": distinct_values_cte("stored", "price_indicators", "coin_id")
    + """
        SELECT s.coin_id, l.symbol, l.ts AS newest_ts, m.name, m.market_cap_rank
        FROM stored s CROSS JOIN LATERAL (
            SELECT p.symbol, p.ts FROM price_indicators p
            WHERE p.coin_id = s.coin_id ORDER BY p.ts DESC LIMIT 1
        ) l
        LEFT JOIN coin_market m ON m.coin_id = s.coin_id
        WHERE s.coin_id IS NOT NULL
        ORDER BY m.market_cap_rank NULLS LAST, s.coin_id""",
    # a coin's rows over the range, oldest first, each with the 24 h volume CoinGecko reported
    # at its ts; ``candles`` makes the 1-minute candles of them (``ts`` as exact epoch
    # microseconds: read as CSV by ``Database.query_csv``)
    "candles": """
        SELECT (extract(epoch FROM p.ts) * 1000000)::int8 AS ts_us, p.price, p.sma_5min,
               p.ema_3min, p.volatility_5min, p.change_1min, p.change_5min, h.total_volume
        FROM price_indicators p
        LEFT JOIN coin_market_history h ON h.coin_id = p.coin_id AND h.ts = p.ts
        WHERE p.coin_id = %(coin)s AND p.ts > %(start)s AND p.ts <= %(end)s
        ORDER BY p.ts""",
    "latest_rows": """
        SELECT coin_id, symbol, ts, price, change_1min, change_5min, sma_5min, ema_3min,
               volatility_5min
        FROM price_indicators
        WHERE coin_id = %(coin)s AND ts > %(start)s AND ts <= %(end)s
        ORDER BY ts DESC LIMIT %(limit)s""",
    "rows_per_poll": """
        SELECT ts, count(*) AS rows FROM price_indicators
        WHERE ts > %(start)s GROUP BY ts ORDER BY ts""",
    "latest_check_results": distinct_values_cte("keys", "check_results", "check_key")
    + """
        SELECT r.* FROM keys k, LATERAL (
            SELECT c.check_key, c.asset_key, c.check_name, c.evaluated_at, c.passed,
                   c.severity, c.description, c.metadata::text AS metadata
            FROM check_results c WHERE c.check_key = k.check_key
            ORDER BY c.evaluated_at DESC LIMIT 1
        ) r
        WHERE k.check_key IS NOT NULL
        ORDER BY r.check_key""",
    "recent_failed_checks": """
        SELECT evaluated_at, asset_key, check_name, severity, description
        FROM check_results WHERE NOT passed AND evaluated_at > %(since)s
        ORDER BY evaluated_at DESC LIMIT %(limit)s""",
    "failed_runs": """
        SELECT failed_at, job_name, launched_by, partition, error, run_id
        FROM run_failures WHERE failed_at > %(since)s
        ORDER BY failed_at DESC LIMIT %(limit)s""",
    "price_alerts": """
        SELECT alerted_at, coin_id, rule, value, ts
        FROM price_alert_events ORDER BY alerted_at DESC, ts DESC LIMIT %(limit)s""",
    "alerts": """
        SELECT alerted_at, alert_key, previous_state, state, message
        FROM alert_history ORDER BY alerted_at DESC LIMIT %(limit)s""",
    "coin_forecasts": """
        SELECT origin_ts, horizon_s, target_ts, predicted_price, lower_80, upper_80, model
        FROM price_forecasts
        WHERE coin_id = %(coin)s AND origin_ts > %(start)s AND origin_ts <= %(end)s
        ORDER BY origin_ts, horizon_s""",
    "promoted_forecast": """
        SELECT evaluated_at, model, horizon_s, n, mae, mase, directional_accuracy, coverage_80
        FROM forecast_evaluation
        WHERE evaluated_at = (SELECT max(evaluated_at) FROM forecast_evaluation) AND promoted
        ORDER BY horizon_s""",
}

#: The queries of each page, with example parameters: what the benchmark times.
PAGE_QUERIES = {
    "market": ("latest_snapshot", "previous_snapshot", "movers", "snapshot_coins",
               "newest_indicator_ts", "latest_row_source", "promoted_forecast",
               "recent_poll_times", "market_table", "sparklines", "price_alerts"),
    "coin": ("coins", "candles", "latest_rows", "coin_forecasts"),
    "pipeline": ("latest_check_results", "recent_failed_checks", "failed_runs", "alerts",
                 "rows_per_poll"),
}  # fmt: skip


class DashboardError(Exception):
    """Something the page shows as a plain message."""


class NoData(DashboardError):
    """A table is missing or empty."""


class DatabaseUnavailable(DashboardError):
    """PostgreSQL cannot be reached (or is not configured)."""


def _missing_table(exc: Exception) -> str | None:
    import psycopg2.errors

    if not isinstance(exc, psycopg2.errors.UndefinedTable):
        return None
    found = re.search(r'relation "([^"]+)" does not exist', str(exc))
    return f"table {found.group(1) if found else '?'} does not exist yet"


class Database:
    """One PostgreSQL connection for the dashboard, reopened after any connection error.

    ``query(name, **params)`` runs ``SQL[name]`` (autocommit, UTC session, a statement timeout)
    and returns a DataFrame. Thread-safe: Streamlit sessions share one instance.
    """

    def __init__(
        self, url: str | None, connect_timeout: int = 3, statement_timeout_ms: int = 10000
    ):
        self.url = url
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self._conn = None
        self._lock = threading.Lock()

    def _connect(self):
        import psycopg2

        if not self.url:
            raise DatabaseUnavailable(
                "MARKETFLOW_POSTGRES_URL is not set: start the dashboard with `marketflow "
                "dashboard` (embedded PostgreSQL) or set it"
            )
        try:
            conn = psycopg2.connect(self.url, connect_timeout=self.connect_timeout)
        except psycopg2.Error as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise DatabaseUnavailable(
                f"PostgreSQL at {redact_url(self.url)} is unreachable ({reason}); retrying"
            ) from exc
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute("SET statement_timeout = %s", (self.statement_timeout_ms,))
        return conn

    @contextmanager
    def cursor(self):
        import psycopg2

        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                with self._conn.cursor() as cur:
                    yield cur
            except psycopg2.Error as exc:
                missing = _missing_table(exc)
                if missing:
                    raise NoData(missing) from exc
                if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
                    self.close_unlocked()
                    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                    raise DatabaseUnavailable(
                        f"PostgreSQL at {redact_url(self.url)} failed ({reason}); retrying"
                    ) from exc
                raise

    def close_unlocked(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self.close_unlocked()

    def query(self, name: str, **params: Any) -> pd.DataFrame:
        with self.cursor() as cur:
            cur.execute(SQL[name], params)
            columns = [d.name for d in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=columns)

    def query_csv(self, name: str, dtype: Mapping[str, str], **params: Any) -> pd.DataFrame:
        """Like :meth:`query` for long results (a coin's week of candles, the sparklines): the
        rows travel as ``COPY ... TO STDOUT`` CSV (parameters bound by the driver, as in
        ``execute``) and are parsed by Arrow's CSV reader as ``dtype`` says (column ->
        ``"float64"``, ``"int64"`` or ``"str"``; every column of the statement), instead of one
        Python object per value. Arrow reads every double exactly (correctly rounded, as
        Python's ``float``: PostgreSQL prints the shortest exact form), ``Infinity``/``NaN``
        included. NULLs as PostgreSQL writes them: an unquoted empty field is NULL (``NaN``,
        ``None`` for text), a quoted one the empty text, and an empty line a row of one NULL
        (kept, not skipped as blank). A week of candles parses in ~6 ms where pandas' exact
        (``round_trip``) C reader took ~45 ms."""
        import pyarrow as pa
        from pyarrow import csv

        with self.cursor() as cur:
            statement = cur.mogrify(SQL[name], params).decode()
            buf = io.BytesIO()
            cur.copy_expert(f"COPY ({statement}) TO STDOUT WITH (FORMAT csv, HEADER)", buf)
        buf.seek(0)
        kinds = {"float64": pa.float64(), "int64": pa.int64(), "str": pa.string()}
        table = csv.read_csv(
            buf,
            parse_options=csv.ParseOptions(ignore_empty_lines=False),
            convert_options=csv.ConvertOptions(
                column_types={column: kinds[kind] for column, kind in dtype.items()},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        return table.to_pandas()

    def scalar(self, name: str, **params: Any) -> Any:
        with self.cursor() as cur:
            cur.execute(SQL[name], params)
            row = cur.fetchone()
            return row[0] if row else None


# ------------------------------------------------------------------------------------------
# Typed reads used by the pages
# ------------------------------------------------------------------------------------------
def _times(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    for col in columns:
        if col in frame:
            frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


def _floats(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    for col in columns:
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    return frame


def _utc(value: datetime | None) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def latest_snapshot(db: Database) -> pd.Timestamp | None:
    return _utc(db.scalar("latest_snapshot"))


def previous_snapshot(db: Database, snapshot: datetime) -> pd.Timestamp | None:
    return _utc(db.scalar("previous_snapshot", snapshot=snapshot))


def movers(db: Database, snapshot: datetime, previous: datetime | None) -> pd.DataFrame:
    """Gainers then losers of ``snapshot`` (rank order) with ``previous_rank`` (nullable int):
    the coin's rank in the same direction among all coins at ``previous``."""
    frame = db.query("movers", snapshot=snapshot, previous=previous)
    frame = _floats(frame, "price", "change_5min")
    frame["previous_rank"] = frame["previous_rank"].astype("Int64")
    frame["rank"] = frame["rank"].astype("int64")
    return frame


def snapshot_coins(db: Database, snapshot: datetime) -> pd.DataFrame:
    return _floats(
        db.query("snapshot_coins", snapshot=snapshot),
        "price",
        "change_5min",
        "volatility_5min",
        "market_cap",
    )


def newest_indicator_ts(db: Database) -> pd.Timestamp | None:
    return _utc(db.scalar("newest_indicator_ts"))


def market_table(db: Database, snapshot: datetime) -> pd.DataFrame:
    """Every coin of ``snapshot``, rank order (see :data:`SQL`)."""
    frame = db.query(
        "market_table", snapshot=snapshot, hour_ago=pd.Timestamp(snapshot) - timedelta(hours=1)
    )
    frame = _floats(
        frame,
        "price", "change_1min", "change_5min", "price_1h_ago", "change_24h", "market_cap",
        "total_volume", "high_24h", "low_24h", "volatility_5min",
    )  # fmt: skip
    frame["market_cap_rank"] = frame["market_cap_rank"].astype("Int64")
    return frame


#: Coins of the market table with a sparkline (the first by rank; the others show none).
SPARKLINE_COINS = 100


def sparklines(db: Database, coins: list[str], end: datetime) -> pd.DataFrame:
    """``coin_id``, ``ts``, ``price`` of ``coins`` over the hour before ``end``."""
    start = pd.Timestamp(end) - timedelta(hours=1)
    frame = db.query_csv(
        "sparklines",
        {"coin_id": "str", "ts_us": "int64", "price": "float64"},
        coins=list(coins),
        start=start,
        end=end,
    )
    ts = pd.to_datetime(frame.pop("ts_us"), unit="us", utc=True)
    return frame.assign(ts=ts).loc[:, ["coin_id", "ts", "price"]]


#: How far back the warm-up states look (the forecasts' first training needs well under that).
WARM_UP_WINDOW = timedelta(hours=3)


def recent_poll_times(db: Database, window: timedelta = WARM_UP_WINDOW) -> list[pd.Timestamp]:
    """Poll times of the last ``window`` (those of the coin of the newest row), oldest first."""
    frame = db.query("recent_poll_times", window=window)
    return [_utc(v) for v in frame["ts"]] if len(frame) else []


def latest_row_source(db: Database) -> tuple[str, pd.Timestamp] | None:
    """``(source, ts)`` of the newest ``price_indicators`` row ('live' | 'dagster'), or None."""
    frame = db.query("latest_row_source")
    if frame.empty:
        return None
    return str(frame["source"].iloc[0]), _utc(frame["ts"].iloc[0])


def coins(db: Database) -> pd.DataFrame:
    return _times(db.query("coins"), "newest_ts")


#: The columns of a coin's rows as ``SQL["candles"]`` reads them (PostgreSQL's CSV).
CANDLE_ROW_DTYPES = {
    "ts_us": "int64",
    "price": "float64",
    "sma_5min": "float64",
    "ema_3min": "float64",
    "volatility_5min": "float64",
    "change_1min": "float64",
    "change_5min": "float64",
    "total_volume": "float64",
}
#: What a candle carries of the row at its close, besides its price.
_AT_CLOSE = ("sma_5min", "ema_3min", "volatility_5min", "change_1min", "change_5min")
_MINUTE_US = 60_000_000


def candles(db: Database, coin: str, start: datetime, end: datetime) -> pd.DataFrame:
    """1-minute OHLC candles of ``coin`` over ``(start, end]`` from its 30 s prices: per UTC
    minute the first row's price (``open``), the highest and lowest (``high``, ``low``), the
    last row's price (``close``) with that row's indicators and the 24 h volume recorded at it,
    and the number of rows (``observations``), oldest minute first. The rows come from the
    covering key in ``ts`` order (one index-only range scan) and are grouped here, with numpy:
    a week is 20,160 rows into 10,080 candles."""
    rows = db.query_csv("candles", CANDLE_ROW_DTYPES, coin=coin, start=start, end=end)
    minute = rows["ts_us"].to_numpy() // _MINUTE_US  # floor: also before 1970
    first = np.flatnonzero(np.diff(minute, prepend=minute[:1] - 1))  # each minute's first row
    last = np.flatnonzero(np.diff(minute, append=minute[-1:] + 1))  # ... and last row
    price = rows["price"].to_numpy()
    return pd.DataFrame(
        {
            "minute": pd.to_datetime(minute[first] * _MINUTE_US, unit="us", utc=True),
            "open": price[first],
            "high": np.maximum.reduceat(price, first),
            "low": np.minimum.reduceat(price, first),
            "close": price[last],
            **{name: rows[name].to_numpy()[last] for name in _AT_CLOSE},
            "observations": (last - first + 1).astype("int64"),
            "total_volume": rows["total_volume"].to_numpy()[last],
        }
    )


def latest_rows(
    db: Database, coin: str, start: datetime, end: datetime, limit: int = LATEST_ROWS_LIMIT
) -> pd.DataFrame:
    frame = db.query("latest_rows", coin=coin, start=start, end=end, limit=limit)
    return _times(frame, "ts")


def rows_per_poll(db: Database, since: datetime) -> pd.DataFrame:
    frame = _times(db.query("rows_per_poll", start=since), "ts")
    frame["rows"] = frame["rows"].astype("int64")
    return frame


def price_alerts(db: Database, limit: int = 20) -> pd.DataFrame:
    """The newest price alerts the live path sent."""
    return _floats(_times(db.query("price_alerts", limit=limit), "alerted_at", "ts"), "value")


def failed_runs(db: Database, since: datetime, limit: int = HISTORY_LIMIT) -> pd.DataFrame:
    """Failed runs recorded by the alert sensor since ``since``, newest first."""
    return _times(db.query("failed_runs", since=since, limit=limit), "failed_at")


def latest_check_results(db: Database) -> pd.DataFrame:
    frame = _times(db.query("latest_check_results"), "evaluated_at")
    frame["metadata"] = [json.loads(m) if m else {} for m in frame["metadata"]]
    return frame


def recent_failed_checks(db: Database, since: datetime, limit: int = HISTORY_LIMIT):
    return _times(db.query("recent_failed_checks", since=since, limit=limit), "evaluated_at")


def alerts(db: Database, limit: int = HISTORY_LIMIT) -> pd.DataFrame:
    return _times(db.query("alerts", limit=limit), "alerted_at")


def coin_forecasts(db: Database, coin: str, start: datetime, end: datetime) -> pd.DataFrame:
    frame = db.query("coin_forecasts", coin=coin, start=start, end=end)
    frame = _times(frame, "origin_ts", "target_ts")
    return _floats(frame, "predicted_price", "lower_80", "upper_80")


def promoted_forecast(db: Database) -> pd.DataFrame:
    frame = _times(db.query("promoted_forecast"), "evaluated_at")
    return _floats(frame, "mae", "mase", "directional_accuracy", "coverage_80")


def example_params(db: Database) -> Mapping[str, dict[str, Any]]:
    """Realistic parameters for every query in :data:`SQL` (benchmark, EXPLAIN tests): the
    newest snapshot, the first coin, 7-day coin ranges ending at its newest row."""
    snapshot = latest_snapshot(db)
    previous = previous_snapshot(db, snapshot) if snapshot is not None else None
    coin_list = coins(db)
    coin = coin_list["coin_id"].iloc[0] if len(coin_list) else ""
    end = coin_list["newest_ts"].iloc[0] if len(coin_list) else snapshot
    start = end - RANGES["7 days"] if end is not None else None
    newest = newest_indicator_ts(db)
    since = newest - ROWS_PER_POLL_WINDOW if newest is not None else None
    coin_range = {"coin": coin, "start": start, "end": end}
    hour_ago = newest - timedelta(hours=1) if newest is not None else None
    return {
        "latest_snapshot": {},
        "previous_snapshot": {"snapshot": snapshot},
        "movers": {"snapshot": snapshot, "previous": previous},
        "snapshot_coins": {"snapshot": snapshot},
        "newest_indicator_ts": {},
        "recent_poll_times": {"window": WARM_UP_WINDOW},
        "market_table": {"snapshot": newest, "hour_ago": hour_ago},
        "sparklines": {"coins": [coin], "start": hour_ago, "end": newest},
        "latest_row_source": {},
        "coins": {},
        "candles": coin_range,
        "latest_rows": {**coin_range, "limit": LATEST_ROWS_LIMIT},
        "rows_per_poll": {"start": since},
        "latest_check_results": {},
        "recent_failed_checks": {"since": since, "limit": HISTORY_LIMIT},
        "failed_runs": {"since": since, "limit": HISTORY_LIMIT},
        "alerts": {"limit": HISTORY_LIMIT},
        "price_alerts": {"limit": 20},
        "coin_forecasts": coin_range,
        "promoted_forecast": {},
    }
