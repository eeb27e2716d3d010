"""Engine limit: the project's Spark indicator computation vs one DuckDB window query.

Both engines run in this process (Spark local mode with the project's ``spark_conf``; DuckDB
in-process, default threads = cores) on the same ``raw_prices`` Delta table (DuckDB reads the
data files of its newest version), and do the same job:
read the raw rows, compute every indicator of docs/INDICATORS.md (``change_1min``,
``change_5min``, ``sma_5min``, ``ema_3min``, ``volatility_5min``) for every row, and write the
result as Parquet. The results are then joined on (``coin_id``, ``ts``) and compared column by
column (relative error <= 1e-9, identical NULLs). Spark's session start-up is excluded
(reported separately); one untimed warm-up run on a small dataset precedes the timed runs of
both engines.

The DuckDB query implements the formulas of docs/INDICATORS.md directly:

* ``change_Nmin``: ``last_value(price)`` over ``RANGE BETWEEN UNBOUNDED PRECEDING AND N s
  PRECEDING`` (the latest observation with ``t <= t_i - N s``; an empty frame gives NULL);
* ``sma_5min`` / ``volatility_5min``: ``avg`` / ``stddev_samp`` over ``RANGE BETWEEN 300 s - 1 us
  PRECEDING AND CURRENT ROW`` (integer microseconds, so the frame is exactly ``(t - 300 s, t]``);
* ``ema_3min``: DuckDB has no recursive window, so the recursion is unrolled:
  ``e_k = sum_m w_m p_m exp(-(t_k - t_m) / tau)`` with ``w_1 = 1`` and
  ``w_m = 1 - exp(-(t_m - t_{m-1}) / tau)``. Terms older than ``40 tau`` weigh less than
  ``exp(-40) = 4e-18`` and are dropped (a 2-hour RANGE window); to keep ``exp`` in range the
  times are anchored at the end of 2-hour blocks, and a second window partitioned by block
  separates the terms of the current block from those of the previous one. Exact up to rounding.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import data
from benchmarks.report import print_table, ratio_line
from marketflow_assets.indicators import INDICATOR_COLUMNS

logger = logging.getLogger(__name__)

TAU_S = 180.0
EMA_SPAN_S = 7200  # 40 tau
RTOL = 1e-9
VALUE_COLUMNS = INDICATOR_COLUMNS[3:]  # price and the five indicators

DUCKDB_SQL = f"""
WITH base AS (
    SELECT id AS coin_id, symbol, ts, epoch_us(ts) AS t, current_price AS price
    FROM read_parquet({{files}}, hive_partitioning = false)
    WHERE current_price IS NOT NULL AND ts IS NOT NULL
),
steps AS (
    SELECT *,
        coalesce(1 - exp(-(t - lag(t) OVER (PARTITION BY coin_id ORDER BY t)) / 1e6 / {TAU_S}),
                 1.0) AS w,
        (t // {EMA_SPAN_S * 1_000_000} + 1) * {EMA_SPAN_S * 1_000_000} AS anchor
    FROM base
),
terms AS (
    SELECT *, w * price * exp((t - anchor) / 1e6 / {TAU_S}) AS z FROM steps
),
win AS (
    SELECT coin_id, symbol, ts, price, t, anchor,
        last_value(price) OVER (PARTITION BY coin_id ORDER BY t
            RANGE BETWEEN UNBOUNDED PRECEDING AND 60000000 PRECEDING) AS ref_1min,
        last_value(price) OVER (PARTITION BY coin_id ORDER BY t
            RANGE BETWEEN UNBOUNDED PRECEDING AND 300000000 PRECEDING) AS ref_5min,
        avg(price) OVER w5 AS sma_5min,
        stddev_samp(price) OVER w5 AS sd,
        count(*) OVER w5 AS n5,
        sum(z) OVER (PARTITION BY coin_id ORDER BY t
            RANGE BETWEEN {EMA_SPAN_S * 1_000_000 - 1} PRECEDING AND CURRENT ROW) AS z_all,
        sum(z) OVER (PARTITION BY coin_id, anchor ORDER BY t
            RANGE BETWEEN {EMA_SPAN_S * 1_000_000 - 1} PRECEDING AND CURRENT ROW) AS z_block
    FROM terms
    WINDOW w5 AS (PARTITION BY coin_id ORDER BY t
        RANGE BETWEEN 299999999 PRECEDING AND CURRENT ROW)
)
SELECT coin_id, symbol, ts, price,
    100 * (price / ref_1min - 1) AS change_1min,
    100 * (price / ref_5min - 1) AS change_5min,
    sma_5min,
    exp(-(t - anchor) / 1e6 / {TAU_S})
        * (z_block + exp(-{EMA_SPAN_S / TAU_S}) * (z_all - z_block)) AS ema_3min,
    CASE WHEN n5 >= 2 THEN sd END AS volatility_5min
FROM win
"""


@dataclass
class EngineResult:
    label: str
    rows: int
    spark_s: float
    duckdb_s: float
    max_rel_err: dict[str, float]
    mismatches: int

    @property
    def spark_rps(self) -> float:
        return self.rows / self.spark_s

    @property
    def duckdb_rps(self) -> float:
        return self.rows / self.duckdb_s


# ------------------------------------------------------------------------------------------------
# The two engines
# ------------------------------------------------------------------------------------------------
def _file_list(raw: Path) -> str:
    """SQL list of the data files of the newest version of the ``raw_prices`` table."""
    from marketflow_assets.raw_dataset import snapshot

    paths = [f.path.as_posix().replace("'", "''") for f in snapshot(raw).files_all]
    return "[" + ", ".join(f"'{p}'" for p in paths) + "]"


def run_duckdb(raw: Path, out: Path, threads: int | None = None) -> int:
    """DuckDB: raw table's Parquet files (newest version) -> indicators -> one Parquet file.
    Returns the row count."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.execute("SET TimeZone = 'UTC'")
        query = DUCKDB_SQL.format(files=_file_list(raw))
        con.execute(f"COPY ({query}) TO '{out.as_posix()}' (FORMAT parquet)")
        return con.execute(f"SELECT count(*) FROM read_parquet('{out.as_posix()}')").fetchone()[0]
    finally:
        con.close()


def run_spark(spark, history: data.History, raw: Path, out: Path) -> None:
    """The project's Spark path: raw Parquet -> indicators -> Parquet directory."""
    from benchmarks.project import spark_indicators

    start, end = history.start_ts.to_pydatetime(), history.end_ts.to_pydatetime()
    frame = spark_indicators(spark, raw, start, end)
    frame.write.mode("overwrite").parquet(out.as_posix())


def compare(spark_out: Path, duck_out: Path) -> tuple[int, dict[str, float], int]:
    """Join both outputs on (coin_id, ts); return (rows, max rel. error per column, mismatches).

    A mismatch is a row missing on one side, a NULL on one side only, or a value whose relative
    error exceeds ``RTOL`` (with an absolute floor of 1e-12 for values that are ~0).
    """
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        con.execute("SET TimeZone = 'UTC'")
        rel = []
        bad = []
        for col in VALUE_COLUMNS:
            a, b = f"s.{col}", f"d.{col}"
            rel.append(
                f"max(CASE WHEN {a} IS NULL OR {b} IS NULL THEN 0 "
                f"ELSE abs({a} - {b}) / greatest(abs({a}), abs({b}), 1e-300) END)"
            )
            bad.append(
                f"(({a} IS NULL) <> ({b} IS NULL) OR "
                f"abs({a} - {b}) > {RTOL} * greatest(abs({a}), abs({b})) + 1e-12)"
            )
        sql = f"""
            SELECT count(*), {", ".join(rel)},
                count(*) FILTER (WHERE s.coin_id IS NULL OR d.coin_id IS NULL
                                 OR {" OR ".join(bad)})
            FROM read_parquet('{spark_out.as_posix()}/*.parquet') s
            FULL JOIN read_parquet('{duck_out.as_posix()}') d
                ON s.coin_id = d.coin_id AND s.ts = d.ts
        """
        row = con.execute(sql).fetchone()
    finally:
        con.close()
    return int(row[0]), dict(zip(VALUE_COLUMNS, row[1:-1], strict=True)), int(row[-1])


# ------------------------------------------------------------------------------------------------
# Benchmark
# ------------------------------------------------------------------------------------------------
def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def sizes(mode: str) -> dict[str, data.History]:
    """1 M and 10 M rows (250 coins at 30 s: 34 h and 334 h); quick mode runs 1 M only."""
    all_sizes = {
        "1M": data.History(hours=34, files="hour"),
        "10M": data.History(hours=334, files="hour"),
    }
    return {"1M": all_sizes["1M"]} if mode == "quick" else all_sizes


def run(mode: str = "quick") -> list[EngineResult]:
    from benchmarks.project import get_bench_spark

    scratch = data.bench_dir() / "engine"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    started = time.perf_counter()
    spark = get_bench_spark()
    startup = time.perf_counter() - started
    print(f"engine: Spark session start-up {startup:.1f} s (excluded from rows/s)")

    warm_history = data.History(hours=1, files="hour")
    warm = data.ensure_history(warm_history)
    run_spark(spark, warm_history, warm, scratch / "warm_spark")
    run_duckdb(warm, scratch / "warm_duck.parquet")

    results = []
    for label, history in sizes(mode).items():
        raw = data.ensure_history(history)
        spark_out, duck_out = scratch / f"spark_{label}", scratch / f"duck_{label}.parquet"
        logger.info("engine %s: Spark ...", label)
        spark_s = _timed(run_spark, spark, history, raw, spark_out)
        logger.info("engine %s: DuckDB ...", label)
        duck_s = _timed(run_duckdb, raw, duck_out)
        rows, rel, bad = compare(spark_out, duck_out)
        results.append(EngineResult(label, history.rows, spark_s, duck_s, rel, bad))
        if rows != history.rows:
            bad += abs(rows - history.rows)
        shutil.rmtree(spark_out, ignore_errors=True)
        duck_out.unlink(missing_ok=True)

    print_table(
        "engine: raw Parquet -> all indicators -> Parquet (same data, same process)",
        ["rows", "Spark s", "Spark rows/s", "DuckDB s", "DuckDB rows/s", "equal"],
        [
            [
                f"{r.rows:,}",
                f"{r.spark_s:.2f}",
                f"{r.spark_rps:,.0f}",
                f"{r.duckdb_s:.2f}",
                f"{r.duckdb_rps:,.0f}",
                "yes" if r.mismatches == 0 else f"NO ({r.mismatches} rows differ)",
            ]
            for r in results
        ],
    )
    for r in results:
        errs = ", ".join(f"{k} {v:.1e}" for k, v in r.max_rel_err.items() if k != "price")
        print(f"engine {r.label}: max relative error Spark vs DuckDB: {errs}")
    for r in results:
        ratio_line(
            f"engine_{r.label} duckdb_rows_per_s / spark_rows_per_s", r.duckdb_rps / r.spark_rps
        )
    return results
