"""Spark Structured Streaming job: Kafka ``crypto_prices`` -> the Delta table ``raw_prices``.

Run ``python spark_streaming/kafka_streaming.py [--available-now]`` or
``spark-submit spark_streaming/kafka_streaming.py [...]``.

Pipeline per micro-batch (``foreachBatch``; see :class:`RawPricesSink`):

1. parse the JSON value with the explicit message schema from :mod:`marketflow_assets.schema`,
   flatten to the raw Parquet columns, times -> UTC timestamps, ``date`` = UTC date of ``ts``;
2. messages that cannot be used (not a JSON object, missing ``id``/``ts``/``current_price``,
   unparsable ``ts``, non-numeric or non-positive price) go to ``raw_prices_rejects/`` with a
   ``reason``;
3. exact duplicates of (``id``, ``ts``) are dropped within the batch (keeping the lowest Kafka
   offset) and against the rows the table already holds (so replays, producer retries, restarts
   and a reset broker never duplicate a row);
4. the batch is committed to the ``raw_prices`` Delta table as ONE transaction carrying the
   application transaction (query id, batch id): a re-run of a committed batch (after a crash
   at any point) is skipped, an uncommitted one is written again -- each batch lands exactly
   once, with no commit files of our own (:mod:`marketflow_assets.raw_dataset`).

Source: Spark's built-in ``kafka`` format when ``spark-sql-kafka`` is on the classpath, otherwise
the Python Data Source in :mod:`spark_streaming.kafka_source` (``--source`` forces either).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from marketflow_assets import contract
from marketflow_assets.kafka_client import source_options, spark_connector_options
from marketflow_assets.monitoring.lag import batch_end_offsets
from marketflow_assets.schema import (
    RAW_COLUMN_NAMES,
    RAW_PARTITION_COLUMN,
    REJECT_COLUMNS,
    spark_ddl,
)
from marketflow_assets.settings import (
    ConfigError,
    KafkaSecurity,
    Settings,
    launched_by_spark_submit,
    load_settings,
)

logger = logging.getLogger("spark_streaming.kafka_streaming")

DESCRIPTION = "Kafka -> the raw_prices Delta table (Spark Structured Streaming)"
QUERY_NAME = "marketflow_raw_prices"
SINK_STATE = "marketflow_sink"  # sub-directory of the Spark checkpoint holding the sink's log
KEEP_COMMITS = 100
#: ``--trigger-seconds 0``: the project's source holds Spark's "anything new?" up to this long,
#: answering as soon as the broker's end offsets move (and have held still for 50 ms: a large
#: poll is published in pieces), so a micro-batch starts when a poll is in, not on a clock.
ON_ARRIVAL_WAIT_MS = 1000
#: ``--trigger-seconds 0`` with Spark's own connector: how often Spark asks (its default 10 ms).
ON_ARRIVAL_POLL_MS = 100

# Reject reasons (column ``reason`` of raw_prices_rejects): the record contract's codes
# (:data:`marketflow_assets.contract.REASONS`), shared with the ingest and the live consumer.
R_EMPTY = contract.EMPTY_VALUE
R_JSON = contract.INVALID_JSON
R_ID = contract.MISSING_ID
R_ID_INVALID = contract.INVALID_ID
R_TS_MISSING = contract.MISSING_TS
R_TS_INVALID = contract.INVALID_TS
R_PRICE_MISSING = contract.MISSING_PRICE
R_PRICE_INVALID = contract.INVALID_PRICE
R_PRICE_NON_POSITIVE = contract.NON_POSITIVE_PRICE
R_FIELD_INVALID = contract.INVALID_FIELD

_PASSED = ("topic", "partition", "offset", "key", "value")


# ------------------------------------------------------------------------------------------------
# Pure Spark transformations (unit-tested in-process).
# ------------------------------------------------------------------------------------------------
def _parse_arrow_batches(batches):
    """``mapInArrow`` body of :func:`parse_messages`: each batch's ``_bytes`` through the record
    contract; the Kafka columns passed through, the raw columns and ``reason`` added."""
    import pyarrow as pa

    for batch in batches:
        table, reasons = contract.parse_values(batch.column("_bytes").to_pylist())
        arrays = [batch.column(name) for name in _PASSED]
        arrays += [column.combine_chunks() for column in table.columns]
        arrays.append(pa.array(reasons, type=pa.string()))
        yield pa.RecordBatch.from_arrays(arrays, names=[*_PASSED, *RAW_COLUMN_NAMES, "reason"])


def parse_messages(kafka_df, rejected_at: dt.datetime | None = None):
    """Kafka rows -> one row per message with the raw columns, ``date`` and a reject ``reason``.

    ``kafka_df`` has the Kafka source columns (``key``/``value`` binary or string, ``topic``,
    ``partition``, ``offset``). Each value is decided by the record contract
    (:func:`marketflow_assets.contract.parse_values`, in the Python workers): ``reason`` is NULL
    for usable messages, else the contract's reason code (the raw columns then NULL).
    """
    import pyspark.sql.functions as F

    df = kafka_df.select(
        F.col("topic").cast("string").alias("topic"),
        F.col("partition").cast("int").alias("partition"),
        F.col("offset").cast("long").alias("offset"),
        F.col("key").cast("string").alias("key"),
        F.col("value").cast("string").alias("value"),
        F.col("value").cast("binary").alias("_bytes"),
    )
    passed = "topic STRING, partition INT, offset BIGINT, key STRING, value STRING"
    parsed = df.mapInArrow(_parse_arrow_batches, f"{passed}, {spark_ddl()}, reason STRING")
    rejected_at = rejected_at or dt.datetime.now(dt.UTC)
    return parsed.select(
        *_PASSED,
        *RAW_COLUMN_NAMES,
        F.to_date("ts").alias(RAW_PARTITION_COLUMN),
        "reason",
        F.lit(rejected_at).cast("timestamp").alias("rejected_at"),
    )


def kafka_columns(kafka_df):
    """The Kafka source columns a micro-batch is collected with (:func:`parse_collected`)."""
    import pyspark.sql.functions as F

    return kafka_df.select(
        F.col("topic").cast("string").alias("topic"),
        F.col("partition").cast("int").alias("partition"),
        F.col("offset").cast("long").alias("offset"),
        F.col("key").cast("string").alias("key"),
        F.col("value").cast("binary").alias("value"),
    )


def _text(values):
    """Binary Kafka values as text, as Spark's cast to string gives them (bytes that are not
    UTF-8 replaced, so a reject is always storable)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(values, pa.string())
    except pa.ArrowInvalid:
        return pa.array(
            [None if v is None else v.decode("utf-8", "replace") for v in values.to_pylist()],
            type=pa.string(),
        )


def parse_collected(kafka_table, schema, rejected_at: dt.datetime | None = None):
    """The driver-side twin of :func:`parse_messages`, on a collected batch: ``kafka_table``
    holds :func:`kafka_columns` (a pyarrow table), ``schema`` is the Arrow schema of
    ``parse_messages(...).toArrow()``; returns the same table that would give. The sink parses
    here, in the driver that needs the batch anyway: no Python worker (~100 MB) kept for it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = kafka_table.column("value")
    table, reasons = contract.parse_values(values.to_pylist())
    rejected_at = rejected_at or dt.datetime.now(dt.UTC)
    columns = {name: kafka_table.column(name) for name in ("topic", "partition", "offset", "key")}
    columns["value"] = _text(values)
    columns.update({name: table.column(name) for name in RAW_COLUMN_NAMES})
    columns[RAW_PARTITION_COLUMN] = pc.cast(table.column("ts"), pa.date32())
    columns["reason"] = pa.array(reasons, type=pa.string())
    columns["rejected_at"] = pa.array(
        [rejected_at] * kafka_table.num_rows, type=pa.timestamp("us", tz="UTC")
    )
    return pa.table(columns).select(schema.names).cast(schema)


def arrow_schema_of(df):
    """The Arrow schema ``df.toArrow()`` gives (the session's time zone, UTC here)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    spark = df.sparkSession
    return to_arrow_schema(
        df.schema,
        error_on_duplicated_field_names_in_struct=True,
        timezone="UTC",
        prefers_large_types=spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false")
        == "true",
    )


def split_batch(parsed):
    """A collected micro-batch (``parse_messages``' columns, a pyarrow table) -> ``(good,
    rejects)`` (pure, in the driver): ``good`` holds the raw columns and ``date`` of the usable
    messages, one row per ``(id, ts)``: the one with the lowest ``(topic, partition, offset)``;
    ``rejects`` the reject columns of the others."""
    import pyarrow as pa
    import pyarrow.compute as pc

    usable = pc.is_null(parsed["reason"])
    rejects = parsed.filter(pc.invert(usable)).select([n for n, _ in REJECT_COLUMNS])
    good = parsed.filter(usable).sort_by(
        [(n, "ascending") for n in ("id", "ts", "topic", "partition", "offset")]
    )
    if good.num_rows > 1:
        keys = good.select(["id", "ts"]).to_pandas()
        first = ~keys.duplicated(keep="first").to_numpy()
        good = good.filter(pa.array(first, type=pa.bool_()))
    return good.select([*RAW_COLUMN_NAMES, RAW_PARTITION_COLUMN]), rejects


# ------------------------------------------------------------------------------------------------
# Exactly-once sink: one Delta transaction per micro-batch.
# ------------------------------------------------------------------------------------------------
def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True, default=str))
    os.replace(tmp, path)


class RawPricesSink:
    """``foreachBatch`` function committing each micro-batch to the ``raw_prices`` Delta table.

    Exactly once by the table's application transactions: a batch is committed as ONE Delta
    commit carrying ``(app id, batch id)``, where the app id names this streaming query (Spark's
    query id, stable across restarts from the same checkpoint); a replayed batch whose id the
    table already holds is skipped (:func:`marketflow_assets.raw_dataset.append_batch`). Rows
    whose (id, ts) the table already holds are dropped (producer retries, spool resends, a reset
    broker). Rejected messages go to the ``raw_prices_rejects`` Delta table the same way, in their
    own commit before the raw one.

    After the commit, a metrics record ``<checkpoint>/marketflow_sink/batches/<batch>.json`` is
    written for monitoring only (lag, reject rate; :mod:`marketflow_assets.monitoring.lag`);
    exactness never depends on it.
    """

    def __init__(
        self, raw_dir: Path, rejects_dir: Path, checkpoint: Path, lag_probe=None, on_commit=None
    ):
        self.raw_dir = Path(raw_dir)
        self.rejects_dir = Path(rejects_dir)
        self.checkpoint = Path(checkpoint)
        self.state = self.checkpoint / SINK_STATE
        self.lag_probe = lag_probe  # callable(batch_id) -> int | None
        self.on_commit = on_commit  # callable(metrics dict) after each commit (Prometheus)
        (self.state / "batches").mkdir(parents=True, exist_ok=True)
        self._app_id: str | None = None
        self._schema = None  # Arrow schema of parse_messages' columns (the same every batch)

    @property
    def app_id(self) -> str:
        """``marketflow_raw_prices:<query id>`` (Spark writes ``<checkpoint>/metadata`` before the
        first batch; a checkpoint deleted and started over is a new query: the (id, ts) dedup
        then keeps the table exact)."""
        if self._app_id is None:
            try:
                query_id = json.loads((self.checkpoint / "metadata").read_text())["id"]
            except (OSError, ValueError, KeyError):
                query_id = "no-checkpoint"
            self._app_id = f"{QUERY_NAME}:{query_id}"
        return self._app_id

    def _prune(self, batch_id: int) -> None:
        for f in (self.state / "batches").glob("*.json"):
            with contextlib.suppress(ValueError):
                if int(f.stem) < batch_id - KEEP_COMMITS:
                    f.unlink(missing_ok=True)

    # -- the foreachBatch function ----------------------------------------------------------
    def __call__(self, df, batch_id: int) -> None:
        self.process(df, batch_id)

    def process(self, df, batch_id: int) -> dict:
        """Commit micro-batch ``batch_id`` exactly once (see the class docstring)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from marketflow_assets.raw_dataset import append_batch, append_rejects, committed_batch

        started = time.monotonic()
        metrics = {
            "batch_id": batch_id,
            "rows_in": 0,
            "rows_written": 0,
            "duplicates": 0,
            "rejects": 0,
            "dates": [],
        }
        done = committed_batch(self.raw_dir, self.app_id)
        if done is not None and done >= batch_id:
            logger.info("batch %d already committed to raw_prices; skipping", batch_id)
            record = self.state / "batches" / f"{batch_id}.json"
            return json.loads(record.read_text()) if record.exists() else metrics
        # ONE Spark job: the Kafka read and the record contract in the Python workers; the batch
        # is collected (the commit below needs it in the driver anyway) and split and deduplicated
        # there (split_batch; a window dedup + two more actions cost 1-2 s per batch). The JSON
        # text is kept for the rejects only.
        # The Kafka rows are collected as they are (one task reads every partition's range: one
        # Python worker of the source stays warm between batches, not one per task slot; a batch
        # is bounded by --max-offsets-per-trigger) and go through the record contract here, in
        # the driver (parse_collected, the twin of parse_messages), not in another worker.
        if self._schema is None:
            self._schema = arrow_schema_of(parse_messages(df))
        parsed = parse_collected(kafka_columns(df.coalesce(1)).toArrow(), self._schema)
        usable = pc.is_null(parsed["reason"])
        collected = parsed.set_column(
            parsed.schema.get_field_index("value"),
            "value",
            pc.if_else(usable, pa.scalar(None, pa.string()), parsed["value"]),
        )
        good, rejects = split_batch(collected)
        metrics["rows_in"] = collected.num_rows
        metrics["rejects"] = rejects.num_rows
        logger.debug("batch %d: parsed at %.2fs", batch_id, time.monotonic() - started)
        if rejects.num_rows:
            append_rejects(self.rejects_dir, rejects, self.app_id, batch_id)
        result = append_batch(
            self.raw_dir,
            good,
            self.app_id,
            batch_id,
            metadata={"rows_in": metrics["rows_in"], "rejects": metrics["rejects"]},
        )
        metrics["rows_written"] = result.rows_written
        metrics["duplicates"] = metrics["rows_in"] - metrics["rejects"] - result.rows_written
        metrics["version"] = result.version
        if good.num_rows:
            metrics["dates"] = sorted({d.isoformat() for d in pc.unique(good["date"]).to_pylist()})
            newest = pc.max(good["ts"]).as_py()
            metrics["ts_max"] = newest.timestamp()  # newest poll ts of the batch: latency
        metrics["lag"] = self.lag_probe(batch_id) if self.lag_probe else None
        metrics["duration_s"] = round(time.monotonic() - started, 3)
        _write_json_atomic(self.state / "batches" / f"{batch_id}.json", metrics)
        self._prune(batch_id)
        logger.info("micro-batch %s", json.dumps(metrics, sort_keys=True))
        if self.on_commit is not None:
            self.on_commit(metrics)
        return metrics


# ------------------------------------------------------------------------------------------------
# Source selection, lag, command line.
# ------------------------------------------------------------------------------------------------
def jvm_kafka_available(spark) -> bool:
    """True when Spark's built-in ``kafka`` format (spark-sql-kafka) is on the classpath."""
    try:
        spark._jvm.org.apache.spark.sql.execution.datasources.DataSource.lookupDataSource(
            "kafka", spark._jsparkSession.sessionState().conf()
        )
        return True
    except Exception:
        return False


def make_lag_probe(bootstrap: str, topic: str, checkpoint: Path, security=None):
    """Return ``lag(batch_id)``: records in the topic beyond the batch's end offsets."""
    from spark_streaming.kafka_source import KafkaOffsetProbe

    probe = KafkaOffsetProbe(bootstrap, topic, client_id="marketflow-spark-lag", security=security)

    def lag(batch_id: int) -> int | None:
        ends = batch_end_offsets(checkpoint, batch_id)
        if ends is None:
            return None
        try:
            done = {int(p): int(o) for p, o in (ends.get(topic) or {}).items()}
            latest = probe.end_offsets(probe.partitions())
        except Exception as exc:  # lag is informative only
            logger.debug("lag probe failed: %s", exc)
            return None
        return sum(max(0, e - done.get(p, 0)) for p, e in latest.items())

    return lag


class StreamMonitor:
    """Prometheus metrics of the job (``--metrics-port``): batch counters from the sink's
    commits, lag gauges refreshed every ``LAG_EVERY_S`` from the checkpoint and the broker
    (:func:`marketflow_assets.monitoring.lag.measure_lag`, the same as the Dagster check)."""

    LAG_EVERY_S = 5.0

    def __init__(
        self,
        bootstrap,
        topic,
        checkpoint: Path,
        port: int | None,
        trigger_s: float,
        security=None,
    ):
        self.metrics = self.probe = None
        self.checkpoint = checkpoint
        self.next_lag = 0.0
        if port is None:
            return
        from marketflow_assets.monitoring.lag import make_probe
        from marketflow_assets.monitoring.metrics import StreamMetrics, metrics_url, serve

        self.metrics = StreamMetrics()
        self.metrics.trigger_seconds.set(trigger_s)
        try:
            bound = serve(self.metrics.registry, port)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port {port}: cannot listen on 127.0.0.1 ({exc})"
            ) from None
        self.probe = make_probe(
            bootstrap, topic, client_id="marketflow-spark-metrics", security=security
        )
        logger.info("streaming metrics on %s", metrics_url(bound))

    def batch_committed(self, batch: dict) -> None:
        if self.metrics is not None:
            self.metrics.batch_committed(batch, time.time())
            self.next_lag = 0.0  # refresh the lag right after a commit

    def tick(self) -> None:
        if self.metrics is None or time.monotonic() < self.next_lag:
            return
        self.next_lag = time.monotonic() + self.LAG_EVERY_S
        from marketflow_assets.monitoring.lag import measure_lag

        try:
            self.metrics.lag(measure_lag(self.checkpoint, self.probe))
        except Exception as exc:  # noqa: BLE001 - lag is informative; the broker may be away
            logger.debug("lag measurement failed: %s", exc)

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--available-now", action="store_true", help="process everything in the topic, then exit"
    )
    parser.add_argument(
        "--trigger-seconds",
        type=float,
        default=10.0,
        help="micro-batch interval in seconds; 0 = a micro-batch as soon as records arrive "
        "(as `marketflow up` runs it)",
    )
    parser.add_argument(
        "--master",
        default=None,
        help="master URL of Spark (default: spark-submit's, $MARKETFLOW_SPARK_MASTER or local[*])",
    )
    parser.add_argument(
        "--starting-offsets",
        choices=("earliest", "latest"),
        default="earliest",
        help="where a query without checkpoint starts",
    )
    parser.add_argument(
        "--topic", default=None, help="topic to read (default: $MARKETFLOW_KAFKA_TOPIC)"
    )
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="bootstrap servers of Kafka (default: $MARKETFLOW_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--source",
        choices=("auto", "kafka", "python"),
        default="auto",
        help="kafka = Spark's JVM connector, python = the Python data source, auto = detect",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0 = a free port)",
    )
    parser.add_argument(
        "--max-offsets-per-trigger",
        type=int,
        default=None,
        help="cap on records per micro-batch; a larger backlog (a catch-up after an outage) is "
        "read in several micro-batches (default: $MARKETFLOW_SPARK_MAX_OFFSETS_PER_TRIGGER, "
        "else 30000)",
    )


def _check_broker(bootstrap: str, topic: str, security: KafkaSecurity) -> None:
    from marketflow_assets.kafka_client import preflight
    from spark_streaming.kafka_source import KafkaOffsetProbe

    preflight(bootstrap, security)  # a refused certificate or password: one line, exit 2
    probe = KafkaOffsetProbe(
        bootstrap,
        topic,
        client_id="marketflow-spark-check",
        security=security,
        bootstrap_timeout_ms=10000,
    )
    try:
        parts = probe.partitions()
    except Exception as exc:
        raise RuntimeError(
            f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}); is the broker up? "
            "(MARKETFLOW_KAFKA_BOOTSTRAP)"
        ) from None
    finally:
        probe.close()
    if not parts:
        logger.info("topic %s does not exist yet; waiting for it to appear", topic)  # start-up


def _resolve_master(requested: str | None) -> str | None:
    if requested:
        return requested
    if launched_by_spark_submit():  # keep spark-submit's master
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()
        return SparkConf().get("spark.master", None)
    return None


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Start the streaming query; return the exit code (raises ConfigError on bad config)."""
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    topic = args.topic or settings.kafka_topic
    if not bootstrap:
        raise ConfigError("MARKETFLOW_KAFKA_BOOTSTRAP is not set (or pass --bootstrap host:port)")
    if args.trigger_seconds < 0:
        raise ConfigError("--trigger-seconds must be >= 0 (0: as soon as records arrive)")
    if args.max_offsets_per_trigger is None:  # a bounded batch: the driver collects it
        args.max_offsets_per_trigger = settings.spark_max_offsets_per_trigger
    if args.max_offsets_per_trigger <= 0:
        raise ConfigError("--max-offsets-per-trigger must be > 0")
    metrics_port = getattr(args, "metrics_port", None)
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be 0..65535, got {metrics_port}")
    checkpoint = settings.checkpoint_dir / "raw_prices" / topic
    checkpoint.mkdir(parents=True, exist_ok=True)
    lock_file = open(checkpoint.parent / f".{topic}.lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"another kafka_streaming job is running on {checkpoint}; stop it first"
        ) from None

    security = settings.kafka_security
    _check_broker(bootstrap, topic, security)
    monitor = StreamMonitor(
        bootstrap, topic, checkpoint, metrics_port, args.trigger_seconds, security
    )

    from marketflow_assets.spark_session import get_spark
    from spark_streaming.kafka_source import FORMAT_NAME, KafkaDataSource

    spark = get_spark(
        _resolve_master(args.master),
        app_name="marketflow-kafka-streaming",
        driver_memory=settings.spark_driver_memory,
    )
    # adaptive execution does not apply to streaming queries (Spark warns and disables it)
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    use_jvm = args.source == "kafka" or (args.source == "auto" and jvm_kafka_available(spark))
    if args.source == "kafka" and not jvm_kafka_available(spark):
        raise ConfigError(
            "--source kafka needs spark-sql-kafka on the classpath (spark-submit --packages "
            "org.apache.spark:spark-sql-kafka-0-10_2.13:<spark version>)"
        )
    on_arrival = not args.available_now and args.trigger_seconds == 0
    if use_jvm:
        if on_arrival:  # Spark's connector cannot hold the question: ask every 100 ms, not 10
            spark.conf.set("spark.sql.streaming.pollingDelay", f"{ON_ARRIVAL_POLL_MS}ms")
        reader = spark.readStream.format("kafka").option("failOnDataLoss", "false")
        reader = reader.options(**spark_connector_options(security))
        if args.max_offsets_per_trigger:
            reader = reader.option("maxOffsetsPerTrigger", args.max_offsets_per_trigger)
    else:
        spark.dataSource.register(KafkaDataSource)
        reader = spark.readStream.format(FORMAT_NAME).options(**source_options(security))
        if args.max_offsets_per_trigger:
            reader = reader.option("maxOffsetsPerTrigger", str(args.max_offsets_per_trigger))
        if on_arrival:
            reader = reader.option("waitForRecordsMs", str(ON_ARRIVAL_WAIT_MS))
    stream = (
        reader.option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", args.starting_offsets)
        .load()
    )
    sink = RawPricesSink(
        settings.raw_dir,
        settings.rejects_dir,
        checkpoint,
        lag_probe=make_lag_probe(bootstrap, topic, checkpoint, security),
        on_commit=monitor.batch_committed,
    )
    writer = (
        stream.writeStream.queryName(QUERY_NAME)
        .foreachBatch(sink)
        .option("checkpointLocation", str(checkpoint))
    )
    if args.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{args.trigger_seconds} seconds")
    logger.info(
        "starting %s: topic=%s bootstrap=%s source=%s raw=%s checkpoint=%s mode=%s",
        QUERY_NAME,
        topic,
        bootstrap,
        "spark-sql-kafka" if use_jvm else "python-datasource",
        settings.raw_dir,
        checkpoint,
        "available-now"
        if args.available_now
        else "as records arrive"
        if on_arrival
        else f"every {args.trigger_seconds:g} s",
    )
    from marketflow_assets.runtime.heap import settle_startup_heap

    # the driver's Python: the micro-batches' records are parsed here
    settle_startup_heap(
        "stream",
        preload=(
            "deltalake",
            "marketflow_assets.raw_dataset",
            "pyarrow.compute",
            "pyspark.sql.pandas.types",
        ),
    )
    query = writer.start()

    stop_requested: list[str] = []

    def _request_stop(signum, _frame):  # never interrupt a py4j call: just flag it
        stop_requested.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    try:
        while not query.awaitTermination(1):  # raises StreamingQueryException if the query fails
            monitor.tick()
            if stop_requested:
                logger.info("%s received; stopping %s", stop_requested[0], QUERY_NAME)
                query.stop()
                break
    except Exception:
        if not stop_requested:
            raise
        # Ctrl-C in a terminal also reaches the JVM, which may already be gone: that is a stop.
        logger.info("Spark shut down while stopping")
    finally:
        monitor.close()
    logger.info("%s stopped", QUERY_NAME)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=load_settings().log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python logs every failed connection attempt; this job reports failures itself.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from marketflow_assets.cli_defaults import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="kafka_streaming",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args, load_settings())
    except ConfigError as exc:
        print(f"kafka_streaming: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # runtime failure: one line, details at debug level
        logger.debug("failure", exc_info=True)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"kafka_streaming: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
