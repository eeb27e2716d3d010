"""The seed's design, as the baseline of the incremental benchmark.

Every run reads ALL raw data (every data file of the ``raw_prices`` table's newest version),
recomputes every indicator of every row with Spark window functions and overwrites both tables.
It is implemented as well as that design allows, so the comparison measures the design, not a
strawman:

* Spark SQL windows only (no Python UDF): ``change_Nmin`` = ``last(price)`` over ``RANGE
  BETWEEN UNBOUNDED PRECEDING AND N s PRECEDING``; ``sma_5min`` / ``volatility_5min`` = ``avg`` /
  ``stddev_samp`` over ``RANGE (t - 300 s, t]`` (integer microseconds); ``ema_3min`` unrolled
  into sums over 2-hour blocks (a growing window inside the block plus the previous block's
  total; older terms weigh < exp(-40) and are dropped), O(1) per row; movers =
  ``row_number()`` per snapshot;
* the indicators are computed once (persisted), written by Spark to Parquet, and loaded with
  ``COPY`` (CSV made by pyarrow's C++ writer) into freshly created tables whose primary keys
  and indexes are built after the load; both tables in one transaction.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from pathlib import Path

from benchmarks.engine import EMA_SPAN_S, TAU_S

logger = logging.getLogger(__name__)

SPAN_US = EMA_SPAN_S * 1_000_000


def seed_frames(spark, raw_dir: Path):
    """(indicators, movers) Spark DataFrames over the whole dataset (lazy)."""
    import pyspark.sql.functions as F
    from pyspark.sql import Window

    from marketflow_assets.raw_dataset import snapshot
    from marketflow_assets.schema import RAW_COLUMNS, spark_ddl

    files = [f.path.as_posix() for f in snapshot(Path(raw_dir)).files_all]  # newest version
    raw = spark.read.schema(spark_ddl(RAW_COLUMNS)).parquet(*files)
    base = raw.where(F.col("current_price").isNotNull() & F.col("ts").isNotNull()).select(
        F.col("id").alias("coin_id"),
        "symbol",
        "ts",
        F.col("current_price").alias("price"),
        F.unix_micros("ts").alias("t"),
    )
    by_coin = Window.partitionBy("coin_id").orderBy("t")

    def frame(lo, hi, *extra):
        return Window.partitionBy("coin_id", *extra).orderBy("t").rangeBetween(lo, hi)

    step = (F.col("t") - F.lag("t").over(by_coin)) / F.lit(1e6 * TAU_S)
    anchor = (F.floor(F.col("t") / F.lit(SPAN_US)) + 1).cast("long") * F.lit(SPAN_US)
    terms = (
        base.withColumn("w", F.coalesce(1 - F.exp(-step), F.lit(1.0)))
        .withColumn("anchor", anchor)
        .withColumn(
            "z", F.col("w") * F.col("price") * F.exp((F.col("t") - F.col("anchor")) / (1e6 * TAU_S))
        )
    )
    # EMA, unrolled: e_k = exp(-(t_k - c_b) / tau) * (sum of z over block b up to k
    #                                                 + exp(-L / tau) * sum of z over block b-1)
    # with blocks of L = 40 tau ending at c_b; older blocks weigh < exp(-40) and are dropped.
    # Growing frames and a per-block total keep this O(1) per row.
    previous = (
        terms.groupBy("coin_id", "anchor")
        .agg(F.sum("z").alias("z_prev"))
        .withColumn("anchor", F.col("anchor") + F.lit(SPAN_US))
    )
    terms = terms.join(F.broadcast(previous), ["coin_id", "anchor"], "left")
    w5 = frame(-299_999_999, 0)
    block = frame(Window.unboundedPreceding, 0, "anchor")
    ref1 = F.last("price").over(frame(Window.unboundedPreceding, -60_000_000))
    ref5 = F.last("price").over(frame(Window.unboundedPreceding, -300_000_000))
    z_block = F.sum("z").over(block)
    z_prev = F.coalesce(F.col("z_prev"), F.lit(0.0))
    indicators = terms.select(
        "coin_id",
        "symbol",
        "ts",
        "price",
        (100 * (F.col("price") / ref1 - 1)).alias("change_1min"),
        (100 * (F.col("price") / ref5 - 1)).alias("change_5min"),
        F.avg("price").over(w5).alias("sma_5min"),
        (
            F.exp(-(F.col("t") - F.col("anchor")) / (1e6 * TAU_S))
            * (z_block + F.exp(F.lit(-EMA_SPAN_S / TAU_S)) * z_prev)
        ).alias("ema_3min"),
        F.when(F.count(F.lit(1)).over(w5) >= 2, F.stddev_samp("price").over(w5)).alias(
            "volatility_5min"
        ),
    )
    eligible = indicators.where(F.col("change_5min").isNotNull())
    parts = []
    for direction, order in (("gainer", F.desc("change_5min")), ("loser", F.asc("change_5min"))):
        ranked = eligible.withColumn(
            "rank", F.row_number().over(Window.partitionBy("ts").orderBy(order, "coin_id"))
        )
        parts.append(
            ranked.where(F.col("rank") <= 5).select(
                F.col("ts").alias("snapshot_ts"),
                F.lit(direction).alias("direction"),
                F.col("rank").cast("int").alias("rank"),
                "coin_id",
                "symbol",
                "change_5min",
                "price",
            )
        )
    return indicators, parts[0].unionByName(parts[1])


def _copy(cur, table: str, parquet_dir: Path) -> int:
    """Stream a Parquet directory into ``table`` with ``COPY`` (CSV by pyarrow), batch by batch."""
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds

    rows = 0
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    dataset = ds.dataset(parquet_dir, format="parquet")
    cols = dataset.schema.names
    for batch in dataset.to_batches(batch_size=250_000):
        buf = io.BytesIO()
        pacsv.write_csv(batch, buf, options)
        buf.seek(0)
        cur.copy_expert(f"COPY {table} ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv)", buf)
        rows += batch.num_rows
    return rows


def seed_full_recompute(spark, raw_dir: Path, postgres_url: str, scratch: Path) -> dict[str, float]:
    """Run the seed design once; seconds per step (``read_compute``, ``write``, ``total``).

    Spark writes its results to Parquet under ``scratch`` (streamed by the executors, so the
    driver never holds millions of rows), then both tables are overwritten in one transaction.
    """
    import psycopg2
    from pyspark import StorageLevel

    from marketflow_assets.schema import TABLES, create_all_sql, create_table_sql

    started = time.perf_counter()
    out = Path(scratch) / "seed-out"
    shutil.rmtree(out, ignore_errors=True)
    indicators, movers = seed_frames(spark, raw_dir)
    indicators = indicators.persist(StorageLevel.DISK_ONLY)
    try:
        indicators.write.parquet((out / "price_indicators").as_posix())
        movers.write.parquet((out / "market_movers").as_posix())
    finally:
        indicators.unpersist()
    computed = time.perf_counter()
    conn = psycopg2.connect(postgres_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
            # Overwrite = drop and recreate (like Spark's JDBC overwrite mode), bulk load first,
            # build the primary keys and indexes afterwards (faster than maintaining them).
            cur.execute("DROP TABLE IF EXISTS price_indicators, market_movers")
            for table in TABLES:
                cur.execute(create_table_sql(table))
                cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
            n_ind = _copy(cur, "price_indicators", out / "price_indicators")
            n_mov = _copy(cur, "market_movers", out / "market_movers")
            for table, (_, key) in TABLES.items():
                cur.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(key)})")
            for statement in create_all_sql():
                cur.execute(statement)
    finally:
        conn.close()
        shutil.rmtree(out, ignore_errors=True)
    done = time.perf_counter()
    logger.info("seed: %d indicator rows, %d mover rows in %.1f s", n_ind, n_mov, done - started)
    return {"read_compute": computed - started, "write": done - computed, "total": done - started}
