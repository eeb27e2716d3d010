"""Dashboard query latency at 7 days x 250 coins: ``dashboard_query_p95_ms``.

Seeds PostgreSQL (embedded, under ``$MARKETFLOW_BENCH_DIR/dashboard``) with the schema of
``marketflow_assets.schema`` (tables *and* indexes) and 7 days of 250 coins polled every 30 s
(5.04 M ``price_indicators`` rows, the ``market_movers`` of every snapshot, a week of recorded
check results and alerts), generated inside PostgreSQL with ``generate_series`` (prices are
smooth deterministic waves, changes pseudo-random: query cost does not depend on the values).
Rows are inserted in time order, like the pipeline writes them. The seeded database is kept and
reused by later runs (a version row marks a complete seed); a fresh seed takes ~1-2 minutes here.

Then every query of every page (``queries.PAGE_QUERIES``) runs through the dashboard's own
functions (``queries.<name>(Database, ...)``: execution + fetch + DataFrame), with the page's
widest parameters (coin queries over 7 days, each repeat a different coin), ``REPEATS`` times
each after one warm-up. The line ``dashboard_query_p95_ms`` is the 95th percentile over all of
them (target <= 100 ms); the slowest queries' own p95 follow. Queries of tables that are absent
(the forecast tables before issue 14) are reported as skipped.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from datetime import timedelta

import numpy as np
import pandas as pd

from benchmarks import data

logger = logging.getLogger(__name__)

COINS = 250
DAYS = 7
INTERVAL_S = 30
REPEATS = {"quick": 20, "full": 60}
SEED_VERSION = 3


def seed_version() -> str:
    """Marks a complete seed of this generator for the current set of tables."""
    from marketflow_assets.schema import TABLES

    return f"{SEED_VERSION}:{','.join(sorted(TABLES))}"


END = data.HISTORY_END  # exclusive end of the history

GENERATE = {
    "price_indicators": """
        INSERT INTO price_indicators
        SELECT r.*
        FROM generate_series(0, %(polls)s - 1) AS k
        CROSS JOIN LATERAL (  -- one poll after the other: the heap is in time order
            SELECT 'coin-' || lpad(c::text, 3, '0'), 's' || c, %(start)s + k * interval '30 s',
                   v.p, (random() - 0.5) * 1.0, (random() - 0.5) * 4.0, v.p * 0.999,
                   v.p * 1.001, v.p * 0.002
            FROM generate_series(0, %(coins)s - 1) AS c,
                 LATERAL (SELECT (1 + c) * (1 + 0.05 * sin(k / 240.0 + c)) AS p) AS v
        ) AS r""",
    # SPEC movers of every snapshot, each snapshot's 250 rows found through the ts index
    "market_movers": """
        INSERT INTO market_movers
        SELECT s.ts, d.direction, m.rank, m.coin_id, m.symbol, m.change_5min, m.price
        FROM (SELECT DISTINCT ts FROM price_indicators) AS s
        CROSS JOIN (VALUES ('gainer'), ('loser')) AS d(direction)
        CROSS JOIN LATERAL (
            SELECT p.coin_id, p.symbol, p.change_5min, p.price,
                   row_number() OVER (ORDER BY CASE d.direction WHEN 'gainer'
                       THEN -p.change_5min ELSE p.change_5min END, p.coin_id) AS rank
            FROM price_indicators p WHERE p.ts = s.ts AND p.change_5min IS NOT NULL
            ORDER BY CASE d.direction WHEN 'gainer' THEN -p.change_5min ELSE p.change_5min END,
                     p.coin_id
            LIMIT 5
        ) AS m""",
    "check_results": """
        INSERT INTO check_results
        SELECT a || ':' || n, %(start)s + m * interval '1 min', a, n, m %% 97 <> 0,
               CASE WHEN m %% 97 <> 0 THEN 'PASSED' ELSE 'WARN' END, 'synthetic',
               jsonb_build_object('newest', %(start)s + m * interval '1 min', 'age_seconds', 30)
        FROM generate_series(0, %(minutes)s - 1) AS m
        CROSS JOIN (VALUES ('raw_prices', 'freshness_check'), ('raw_prices', 'prices_positive'),
                           ('raw_prices', 'unique_id_ts'), ('raw_prices', 'rows_per_poll_stable'),
                           ('price_indicators', 'freshness_check'),
                           ('market_movers', 'freshness_check')) AS c(a, n)""",
    "alert_history": """
        INSERT INTO alert_history
        SELECT %(start)s + h * interval '5 min', 'raw_prices:freshness_check',
               CASE WHEN h %% 2 = 0 THEN 'passed' ELSE 'WARN' END,
               CASE WHEN h %% 2 = 0 THEN 'WARN' ELSE 'passed' END, 'synthetic alert ' || h
        FROM generate_series(0, %(alerts)s - 1) AS h""",
}
#: The forecast tables (SPEC columns) once ``schema.py`` defines them (issue 14): a 300 s forecast
#: of every coin every 5 minutes for 7 days, and an hourly evaluation of 4 models.
GENERATE_FORECASTS = {
    "price_forecasts": """
        INSERT INTO price_forecasts (coin_id, origin_ts, horizon_s, target_ts, predicted_price,
                                     lower_80, upper_80, model)
        SELECT coin_id, ts, 300, ts + interval '300 s', price, price * 0.99, price * 1.01,
               'naive_last_price'
        FROM price_indicators
        WHERE ts >= %(start)s AND extract(epoch FROM ts)::bigint %% 300 = 0""",
    "forecast_evaluation": """
        INSERT INTO forecast_evaluation (evaluated_at, model, horizon_s, n, mae, mase,
                                         directional_accuracy, coverage_80, promoted)
        SELECT %(start)s + h * interval '1 hour', m, 300, 5000, 0.01, mase, 0.5, 0.8, m = 'naive'
        FROM generate_series(0, %(hours)s - 1) AS h
        CROSS JOIN (VALUES ('naive', 1.0), ('drift', 1.02), ('ema', 1.01), ('lightgbm', 0.97))
            AS c(m, mase)""",
}


def _seeded(url: str) -> bool:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('bench_dashboard_seed')")
            if cur.fetchone()[0] is None:
                return False
            cur.execute("SELECT version FROM bench_dashboard_seed")
            row = cur.fetchone()
            return bool(row) and row[0] == seed_version()
    finally:
        conn.close()


def seed(url: str) -> float:
    """(Re)create every Marketflow table with its indexes and fill it; returns seconds."""
    import psycopg2

    from marketflow_assets.schema import TABLES, create_all_sql, create_table_sql

    started = time.perf_counter()
    start = (END - pd.Timedelta(days=DAYS)).to_pydatetime()
    params = {
        "start": start,
        "polls": DAYS * 86400 // INTERVAL_S,
        "coins": COINS,
        "minutes": DAYS * 1440,
        "alerts": 2000,
        "hours": DAYS * 24,
    }
    generate = dict(GENERATE)
    generate.update({t: sql for t, sql in GENERATE_FORECASTS.items() if t in TABLES})
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute("SET work_mem = '256MB'")
            cur.execute("SET maintenance_work_mem = '256MB'")
            cur.execute("DROP TABLE IF EXISTS bench_dashboard_seed")
            cur.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)} CASCADE")
            # Bulk load as an operator would: unlogged tables (no WAL; reads are unaffected),
            # keys and indexes built after the price rows, then the real schema's indexes.
            for table in TABLES:
                cur.execute(create_table_sql(table))
                cur.execute(f"ALTER TABLE {table} SET UNLOGGED")
            cur.execute("ALTER TABLE price_indicators DROP CONSTRAINT price_indicators_pkey")
            for table, statement in generate.items():
                t0 = time.perf_counter()
                cur.execute(statement, params)
                logger.info("dashboard seed: %s %d rows in %.1f s", table, cur.rowcount,
                            time.perf_counter() - t0)  # fmt: skip
                if table == "price_indicators":
                    t0 = time.perf_counter()
                    cur.execute("ALTER TABLE price_indicators ADD PRIMARY KEY (coin_id, ts)")
                    for statement in create_all_sql():  # the real schema's indexes
                        cur.execute(statement)
                    logger.info("dashboard seed: indexes in %.1f s", time.perf_counter() - t0)
            cur.execute(f"VACUUM (ANALYZE) {', '.join(TABLES)}")
            cur.execute("CREATE TABLE bench_dashboard_seed (version text)")
            cur.execute("INSERT INTO bench_dashboard_seed VALUES (%s)", (seed_version(),))
    finally:
        conn.close()
    return time.perf_counter() - started


def _calls(db, snapshot, previous, coins: list[str], newest, rng) -> dict:
    """name -> zero-argument callable running that page query with realistic parameters."""
    from marketflow_assets.dashboard import queries as q

    # the market page's sparklines: the first coins of its table, as the page asks for them
    top = tuple(q.market_table(db, newest)["coin_id"].head(q.SPARKLINE_COINS))

    def coin_range():
        coin = coins[int(rng.integers(len(coins)))]
        return coin, newest - q.RANGES["7 days"], newest

    return {
        "latest_snapshot": lambda: q.latest_snapshot(db),
        "previous_snapshot": lambda: q.previous_snapshot(db, snapshot),
        "movers": lambda: q.movers(db, snapshot, previous),
        "snapshot_coins": lambda: q.snapshot_coins(db, snapshot),
        "newest_indicator_ts": lambda: q.newest_indicator_ts(db),
        "latest_row_source": lambda: q.latest_row_source(db),
        "promoted_forecast": lambda: q.promoted_forecast(db),
        "coins": lambda: q.coins(db),
        "candles": lambda: q.candles(db, *coin_range()),
        "latest_rows": lambda: q.latest_rows(db, *coin_range()),
        "coin_forecasts": lambda: q.coin_forecasts(db, *coin_range()),
        "latest_check_results": lambda: q.latest_check_results(db),
        "recent_failed_checks": lambda: q.recent_failed_checks(db, newest - timedelta(days=7)),
        "alerts": lambda: q.alerts(db),
        "rows_per_poll": lambda: q.rows_per_poll(db, newest - q.ROWS_PER_POLL_WINDOW),
        "recent_poll_times": lambda: q.recent_poll_times(db),
        "market_table": lambda: q.market_table(db, newest),
        "sparklines": lambda: q.sparklines(db, top, newest),
        "price_alerts": lambda: q.price_alerts(db),
        "failed_runs": lambda: q.failed_runs(db, newest - timedelta(hours=24)),
    }


def measure(url: str, repeats: int) -> dict[str, list[float]]:
    """Milliseconds of each query run (after one warm-up run each)."""
    from marketflow_assets.dashboard import queries as q

    db = q.Database(url)
    try:
        snapshot = q.latest_snapshot(db)
        previous = q.previous_snapshot(db, snapshot)
        coins = q.coins(db)["coin_id"].to_list()
        newest = q.newest_indicator_ts(db)
        calls = _calls(db, snapshot, previous, coins, newest, np.random.default_rng(3))
        names = [n for page in q.PAGE_QUERIES.values() for n in page]
        assert set(names) == set(calls) == set(q.SQL), "a dashboard query is not benchmarked"
        timings: dict[str, list[float]] = {}
        for name in names:
            try:
                calls[name]()  # warm-up (plans, buffers)
            except q.NoData as exc:
                print(f"dashboard query {name}: skipped ({exc})")
                continue
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                calls[name]()
                runs.append((time.perf_counter() - t0) * 1000)
            timings[name] = runs
        return timings
    finally:
        db.close()


def candles_without_covering_index(url: str, repeats: int) -> tuple[float, float]:
    """Median ms of a week of one coin's candles (``queries.candles``) with the covering index
    and, side by side in the same run and the same code path, without it (dropped inside a
    transaction that is rolled back): the rows then come from ~20k heap pages instead of an
    index-only scan. The covering index is the table's key (``schema.KEY_INCLUDE``): it is
    replaced by a plain key over the same columns, built inside that transaction (or, in a
    table made before, the separate ``price_indicators_coin_series_idx`` is dropped)."""
    from marketflow_assets.dashboard import queries as q

    db = q.Database(url)
    try:
        newest = q.newest_indicator_ts(db)
        start = newest - q.RANGES["7 days"]

        def timed(offset: int) -> list[float]:
            runs = []
            for k in range(repeats):
                t0 = time.perf_counter()
                q.candles(db, f"coin-{(7 * k + offset) % COINS:03d}", start, newest)
                runs.append((time.perf_counter() - t0) * 1000)
            return runs

        with_index = timed(0)
        with db.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("DROP INDEX IF EXISTS price_indicators_coin_series_idx")  # rolled back
            cur.execute(
                "SELECT indnatts > indnkeyatts FROM pg_index WHERE indisprimary "
                "AND indrelid = 'price_indicators'::regclass"
            )
            if cur.fetchone()[0]:  # the key carries the columns: a plain key instead
                cur.execute(
                    "ALTER TABLE price_indicators DROP CONSTRAINT price_indicators_pkey, "
                    "ADD PRIMARY KEY (coin_id, ts)"
                )
            cur.execute("ANALYZE price_indicators")
        try:
            without = timed(3)
        finally:
            with db.cursor() as cur:
                cur.execute("ROLLBACK")
    finally:
        db.close()
    return statistics.median(with_index), statistics.median(without)


def run(mode: str = "quick") -> float:
    from marketflow_assets.runtime.services import EmbeddedPostgres

    folder = data.bench_dir() / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    with EmbeddedPostgres(folder / "pgdata") as url:
        if _seeded(url):
            logger.info("dashboard: reusing the seeded database under %s", folder)
        else:
            logger.info("dashboard: seeding %d coins x %d days (once; kept for later runs)",
                        COINS, DAYS)  # fmt: skip
            print(f"dashboard seed: {seed(url):.1f} s (untimed, cached in {folder})")
        load = os.getloadavg()[0]
        timings = measure(url, REPEATS[mode])
        indexed, heap = candles_without_covering_index(url, 5)
    every = [ms for runs in timings.values() for ms in runs]
    p95 = float(np.percentile(every, 95))
    print(f"dashboard: {len(every)} query runs over {len(timings)} queries, {COINS} coins x "
          f"{DAYS} days")  # fmt: skip
    slowest = sorted(timings, key=lambda n: -float(np.percentile(timings[n], 95)))[:5]
    for name in slowest:
        runs = timings[name]
        print(f"  {name}: p95 {np.percentile(runs, 95):.1f} ms, median "
              f"{statistics.median(runs):.1f} ms")  # fmt: skip
    print(f"dashboard_candles_7d heap_ms / index_only_ms = {heap / indexed:.1f}   "
          f"({heap:.0f} ms without the covering index vs {indexed:.0f} ms with it)")  # fmt: skip
    print(f"dashboard_query_p95_ms = {p95:.1f}   (target <= 100; load average {load:.1f} on "
          f"{os.cpu_count()} cores at the start)")  # fmt: skip
    return p95
