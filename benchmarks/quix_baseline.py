"""Baseline of the latency benchmark: a plain Python stream processor (Quix Streams) on the same
broker, topic and PostgreSQL as Marketflow.

``python -m benchmarks.quix_baseline --bootstrap HOST:PORT --topic T --postgres-url URL`` consumes
the price topic (JSON values keyed by coin id, as ``marketflow ingest`` publishes them) with a
Quix Streams ``Application`` (confluent-kafka / librdkafka underneath, its own consumer group) and
sinks every checkpoint into ``quix_price_indicators`` (the columns and key of
``price_indicators``). The indicator math is the project's: :func:`compute_indicators` of
``marketflow_assets/indicators.py`` over the new records plus an in-memory lookback (the raw
observations of the last 300 s per coin, and per coin the state an incremental refresh reads back:
the last emitted row more than 300 s before the batch and the last EMA value before it). So the
rows equal Marketflow's; the processor just skips the Parquet dataset, Dagster and Spark.

Quix Streams settings that matter against the embedded Tansu broker: ``auto_create_topics=False``
(the benchmark creates the topic; Tansu's admin API is not needed), ``use_changelog_topics=False``
(no state store: the lookback lives in the sink), ``auto_offset_reset="earliest"`` with a fresh
consumer group per run, ``commit_interval`` (how often the sink flushes: the processor's trigger,
0.5 s by default, against the streaming job's 2 s trigger plus the Dagster run), and
``session.timeout.ms`` = 10 s: Tansu answers the JoinGroup that carries the member id only after
about half the session timeout (librdkafka's default 45 s: 23 s to join; 10 s: about 5 s).

Each flush logs ``flush: R records, N rows upserted in S s (newest ts ...)``; ``ready: consuming``
once the consumer group has its partitions.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings

import pandas as pd

logger = logging.getLogger("quix_baseline")

TABLE = "quix_price_indicators"
#: raw observations kept per coin for the lookback: the window (300 s) plus a margin for polls
#: that arrive out of order across partitions
KEEP_RAW_SECONDS = 360
#: emitted rows kept for the state (ref row > 300 s before a batch, last EMA value)
KEEP_ROWS_SECONDS = 720


def import_quixstreams():
    """``quixstreams``, imported without authlib's deprecation warning about httpx (authlib, a
    dependency of confluent-kafka's schema registry client, turns its warnings to "always" when
    imported, so the filter must follow that import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import authlib.deprecate  # noqa: F401 - installs its filter, removed on exit
        except ImportError:
            pass
        warnings.simplefilter("ignore")
        import quixstreams
    return quixstreams


def create_table_sql(table: str = TABLE) -> str:
    from marketflow_assets.schema import TABLES

    columns, key = TABLES["price_indicators"]
    body = ", ".join(f"{name} {kind}" for name, kind in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} ({body}, PRIMARY KEY ({', '.join(key)}))"


class IndicatorState:
    """The lookback of the stream: recent raw observations and recently emitted rows."""

    def __init__(self) -> None:
        from marketflow_assets.indicators import RAW_INPUT_COLUMNS

        self.raw = pd.DataFrame({name: [] for name in RAW_INPUT_COLUMNS})
        self.raw["ts"] = pd.to_datetime(self.raw["ts"], utc=True)
        self.emitted: pd.DataFrame | None = None
        self._pruned_at: pd.Timestamp | None = None

    def update(self, new: pd.DataFrame) -> pd.DataFrame:
        """Indicator rows of the coins in ``new``, from the oldest ``ts`` of ``new`` on.

        Only those coins are recomputed (a coin's indicators depend on its own observations
        only), so a poll that a checkpoint cuts in two costs its records once, not twice."""
        from marketflow_assets import indicators as ind

        start = new["ts"].min()
        coins = pd.unique(new["id"])
        raw = self.raw
        lookback = raw[(raw["ts"] >= ind.lookback_start(start)) & raw["id"].isin(coins)]
        window = pd.concat([lookback, new], ignore_index=True)
        state = None
        if self.emitted is not None:
            prior = self.emitted[self.emitted["coin_id"].isin(coins)]
            if len(prior):
                state = ind.state_from_indicators(prior, start)
        rows = ind.compute_indicators(window, state, start=start)
        self.raw = pd.concat([raw, new], ignore_index=True)
        self.emitted = rows if self.emitted is None else pd.concat([self.emitted, rows])
        newest = self.raw["ts"].max()
        if self._pruned_at is None or newest - self._pruned_at >= pd.Timedelta(seconds=60):
            self._prune(newest)
        return rows

    def _prune(self, newest: pd.Timestamp) -> None:
        """Keep what a batch at most ``KEEP_RAW_SECONDS - 300 s`` older than ``newest`` needs:
        the raw rows of the lookback, and per coin the emitted rows of the state."""
        self.raw = self.raw[self.raw["ts"] >= newest - pd.Timedelta(seconds=KEEP_RAW_SECONDS)]
        self.raw = self.raw.reset_index(drop=True)
        kept = self.emitted.drop_duplicates(["coin_id", "ts"], keep="last")
        recent = kept["ts"] >= newest - pd.Timedelta(seconds=KEEP_ROWS_SECONDS)
        older = kept[~recent].sort_values("ts", kind="mergesort").groupby("coin_id").tail(1)
        self.emitted = pd.concat([older, kept[recent]], ignore_index=True)
        self._pruned_at = newest


def _frame(values: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(values, columns=["id", "symbol", "ts", "current_price"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    frame["current_price"] = pd.to_numeric(frame["current_price"], errors="coerce")
    return frame


class Upserter:
    """Writes indicator rows to ``TABLE``: ``COPY`` into a temporary table, then
    ``INSERT ... ON CONFLICT DO UPDATE`` (idempotent, like ``price_indicators``)."""

    def __init__(self, url: str):
        import psycopg2

        from marketflow_assets.schema import column_names

        self.columns = column_names("price_indicators")
        self.conn = psycopg2.connect(url)
        with self.conn, self.conn.cursor() as cur:
            cur.execute(create_table_sql())

    def write(self, rows: pd.DataFrame) -> None:
        from marketflow_assets.resources.postgres import csv_payload

        cols = ", ".join(self.columns)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns[2:])
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS _quix_batch (LIKE {TABLE}) ON COMMIT DELETE ROWS"
            )
            cur.copy_expert(
                f"COPY _quix_batch ({cols}) FROM STDIN WITH (FORMAT csv)",
                csv_payload(rows.loc[:, list(self.columns)]),
            )
            cur.execute(
                f"INSERT INTO {TABLE} ({cols}) SELECT {cols} FROM _quix_batch "
                f"ON CONFLICT (coin_id, ts) DO UPDATE SET {updates}"
            )

    def close(self) -> None:
        self.conn.close()


def make_sink(url: str):
    from quixstreams.sinks import BatchingSink, SinkBatch

    class IndicatorSink(BatchingSink):
        """Per checkpoint (``commit_interval``): one indicator computation and one upsert for
        all records of all partitions (coins are keyed, so a coin lives in one partition)."""

        def __init__(self) -> None:
            super().__init__()
            self.state = IndicatorState()
            self.upserter: Upserter | None = None

        def setup(self) -> None:
            self.upserter = Upserter(url)

        def write(self, batch: SinkBatch) -> None:  # one partition (flush() below batches all)
            raise NotImplementedError

        def flush(self) -> None:
            try:
                values = [item.value for batch in self._batches.values() for item in batch]
                if not values:
                    return
                started = time.perf_counter()
                frame = _frame(values)
                rows = self.state.update(frame)
                if self.upserter is None:
                    self.setup()
                self.upserter.write(rows)
                logger.info(
                    "flush: %d records, %d rows upserted in %.2f s (newest ts %s)",
                    len(values),
                    len(rows),
                    time.perf_counter() - started,
                    frame["ts"].max().isoformat(),
                )
            finally:
                self._batches.clear()

    return IndicatorSink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quix_baseline", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--group", default=f"quix-baseline-{int(time.time())}")
    parser.add_argument("--commit-interval", type=float, default=0.5)
    parser.add_argument(
        "--session-timeout-ms",
        type=int,
        default=10_000,
        help="consumer group session timeout; Tansu answers a JoinGroup after about half of it",
    )
    parser.add_argument("--state-dir", default=None, help="Quix Streams' state directory")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    Application = import_quixstreams().Application

    started = time.monotonic()

    def on_assign(consumer, partitions):
        logger.info(
            "ready: consuming %d partitions, group joined %.1f s after start",
            len(partitions),
            time.monotonic() - started,
        )

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        auto_create_topics=False,
        use_changelog_topics=False,
        consumer_poll_timeout=0.1,
        consumer_extra_config={
            "session.timeout.ms": args.session_timeout_ms,
            "heartbeat.interval.ms": min(3000, args.session_timeout_ms // 3),
        },
        state_dir=args.state_dir or tempfile.mkdtemp(prefix="quix-state-"),
        loglevel="INFO",
    )
    topic = app.topic(args.topic, value_deserializer="json", key_deserializer="str")
    sdf = app.dataframe(topic)
    sdf = sdf.filter(lambda value: isinstance(value, dict) and "id" in value and "ts" in value)
    sdf.sink(make_sink(args.postgres_url))
    _log_assignments(app, on_assign)
    app.run()
    logger.info("stopped after %.0f s", time.monotonic() - started)
    return 0


def _log_assignments(app, callback) -> None:
    """Log when the consumer group assigned partitions (Quix Streams has no public hook)."""
    original = app._on_assign  # noqa: SLF001

    def wrapped(consumer, partitions):
        original(consumer, partitions)
        if partitions:
            callback(consumer, partitions)

    app._on_assign = wrapped  # noqa: SLF001


if __name__ == "__main__":
    sys.exit(main())
