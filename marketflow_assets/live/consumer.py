"""The live consumer loop: poll the topic, compute, write, repeat (see the package docstring).

Partitions are assigned manually (``KafkaConsumer.assign``: no consumer group, no group join -
a Tansu group join takes ~20 s) and positioned at the offsets stored in ``live_offsets`` (the
beginning of a partition never seen). Every batch - the records one poll returns plus what is
already fetched, at most ``max_batch_records`` - is written by a writer thread
(:class:`_Writer`) in the order the batches were computed, while the next batch is fetched and
computed (PostgreSQL works on another core meanwhile): its indicator rows and movers in one
transaction; the records' market data and the stored offsets in another, for every batch
written since, once no batch came for half a second (both idempotent and the offsets last, so a
stop in between loses and doubles nothing: :mod:`marketflow_assets.live.store`). The next batch
is computed from the state the previous one leads to, before that one committed; if a write
fails, the batches computed after it are dropped and the consumer ends, so what resumes - a new
consumer - starts from what was committed (state and offsets are read from the tables). A lost
PostgreSQL or broker connection ends this consumer; ``marketflow live`` waits for the service
with backoff and starts a new one, which resumes from what was committed
(:func:`~marketflow_assets.live.command.run_waiting`). Any other error ends the process (exit
1), and the supervisor's restart resumes the same way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from marketflow_assets import contract, kafka_client
from marketflow_assets import indicators as ind
from marketflow_assets.live.alerting import LiveAlerts
from marketflow_assets.live.store import LiveStore, snapshot_times
from marketflow_assets.market import RAW_SOURCE_COLUMNS
from marketflow_assets.settings import KafkaSecurity

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger("marketflow.live")

#: How often the consumer looks for partitions added to the topic.
PARTITION_REFRESH_SECONDS = 30.0

#: How long one poll waits when nothing comes. It returns as soon as a fetch brings records
#: (the broker answers each fetch within ``poll_timeout_s`` and kafka-python sends the next
#: one), so this bounds only how soon an idle consumer sees a stop or runs its checks; a poll
#: call per fetch cost idle about half as much CPU again (22 vs 15 ms a second at 0.1 s).
IDLE_POLL_SECONDS = 1.0


#: The least time between two metadata refreshes of the consumer's kafka-python client.
METADATA_BACKOFF_MS = 5

#: The raw columns the indicators read (``advance_indicators``' batch) ...
_COLUMNS = ["id", "symbol", "ts", "current_price"]
#: ... and those of the coins' market data (``coin_market``), read too.
_READ = list(dict.fromkeys([*_COLUMNS, *RAW_SOURCE_COLUMNS]))


def parse_records(values: list) -> tuple[pd.DataFrame, pa.Table, list[str | None]]:
    """Kafka message values -> the valid ones' ``id``, ``symbol``, ``ts``, ``current_price`` (a
    DataFrame, in order: what ``advance_indicators`` reads), the same records' raw columns of
    ``coin_market`` (an Arrow table: they are written as they are) and each value's reason code
    (None = valid): the record contract (:func:`marketflow_assets.contract.parse_values`), so a
    live row exists only for a message the Spark job writes to the raw dataset."""
    import pyarrow as pa

    table, reasons = contract.parse_values(values)
    table = table.select(_READ)
    valid = [reason is None for reason in reasons]
    if not all(valid):
        table = table.filter(pa.array(valid, type=pa.bool_()))
    frame = table.select(_COLUMNS).to_pandas(coerce_temporal_nanoseconds=True)
    return frame, table, reasons


@dataclass
class _Computed:
    """A batch computed and not yet handed to the writer (:meth:`LiveConsumer.compute`)."""

    records: kafka_client.Fetched
    rows: pd.DataFrame
    state: ind.LiveState
    skipped: pd.DataFrame
    market: pa.Table
    reasons: list[str | None]
    started: float
    computed: float


@dataclass
class BatchStats:
    records: int = 0
    rows: int = 0
    skipped: int = 0
    invalid: int = 0
    movers: int = 0
    #: from the start of its computation to its indicator transaction committed ...
    seconds: float = 0.0
    #: ... of which computing it (record contract and indicators), waiting for the writer
    #: (the batches before it) and its transaction
    compute_s: float = 0.0
    queued_s: float = 0.0
    write_s: float = 0.0


#: How long the writer waits, after a batch is written, for the next one before it writes the
#: market data and offsets of the batches written so far (:meth:`LiveConsumer._write_market`):
#: a poll comes in several batches, and that second transaction (0.1-0.4 s for a whole market)
#: written between two of them held up the next batch's rows and took PostgreSQL's CPU while
#: the poll's last rows were still to come.
QUIET_SECONDS = 0.5

#: ... and at the latest this long after the first of them was written (batches that never
#: pause - a busy topic - still get their offsets stored).
MARKET_MAX_DELAY_SECONDS = 5.0

#: ... or once this many records' market data waits (whatever the batches' size).
MARKET_MAX_RECORDS = 100_000

#: A marker on the writer's queue: run the idle step now (:meth:`_Writer.flush`).
_FLUSH = object()


class _Writer:
    """The live consumer's PostgreSQL writes on a thread of their own, one batch at a time in
    submission order; at most one computed batch waits while another is written. ``idle`` runs
    once no batch came for ``quiet`` seconds after a write, at :meth:`flush` and before the
    thread ends. After a failed write nothing more is written, and the error is raised in the
    consumer's thread (:meth:`check`)."""

    def __init__(self, write, idle, quiet: float = QUIET_SECONDS):
        self._write = write
        self._idle = idle
        self._quiet = quiet
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        written = False  # a batch was written since the idle step last ran
        while True:
            try:
                item = self._queue.get(timeout=self._quiet if written else None)
            except queue.Empty:
                item = _FLUSH
                done = None
            else:
                done = self._queue.task_done
            try:
                if item is None or item is _FLUSH:
                    if written and self.error is None:
                        written = False
                        self._idle()
                    if item is None:
                        return
                elif self.error is None:
                    self._write(*item)
                    written = True
            except BaseException as exc:  # noqa: BLE001 - raised in the consumer's thread
                self.error = exc
            finally:
                if done is not None:
                    done()

    def waiting(self) -> tuple | None:
        """The batch waiting to be written next (its ``submit`` arguments), if any."""
        with self._queue.mutex:
            item = self._queue.queue[0] if self._queue.queue else None
        return item if isinstance(item, tuple) else None

    def check(self) -> None:
        """Raise the error of a failed write, if any (then nothing more was written)."""
        if self.error is not None:
            raise self.error

    def submit(self, *item) -> None:
        """Queue one batch's write (waits while another batch is already waiting)."""
        self.check()
        self._queue.put(item)

    def flush(self) -> None:
        """Wait until every submitted batch is written and the idle step ran (or a write
        failed); then :meth:`check`."""
        if self._thread.is_alive():
            self._queue.put(_FLUSH)
        self._queue.join()
        self.check()

    def close(self) -> None:
        """Finish the submitted writes, run the idle step and end the thread (errors are not
        raised here)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


@dataclass
class LiveConsumer:
    bootstrap: str
    topic: str
    postgres_url: str
    #: How long each fetch waits at the broker for records (on Tansu the longest a new record
    #: waits: it answers a waiting fetch when the wait ends).
    poll_timeout_s: float = 0.1
    max_batch_records: int = 100_000
    client_id: str = "marketflow-live"
    stats: list[BatchStats] = field(default_factory=list)
    #: Price alert rules (``marketflow_assets/price_alerts.py``); None: none.
    alerts_file: Path | None = None
    webhook_url: str | None = field(default=None, repr=False)
    #: Protocol, SASL credentials and TLS files of the consumer (None: PLAINTEXT).
    security: KafkaSecurity | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.store = LiveStore(self.postgres_url)
        started = time.perf_counter()
        self.state = self.store.load_state()
        logger.info(
            "live: state of %d coins rebuilt from price_indicators in %.2f s",
            len(self.state.last),
            time.perf_counter() - started,
        )
        self.alerting = LiveAlerts(self.alerts_file, self.webhook_url)
        self.alerting.prime(self.store.conn)
        #: kafka-python, never assigned: the topic's partitions and id (fresh metadata)
        self.consumer = self._consumer()
        #: librdkafka: the records (:class:`~marketflow_assets.kafka_client.RecordFetcher`)
        self.fetcher = self._fetcher()
        #: Market data and next offsets of the batches whose indicators are committed, not
        #: yet written (:meth:`_write_market`); the writer thread's.
        self._unstored: list[tuple[pa.Table, dict[int, int]]] = []
        self._unstored_since = 0.0
        self.writer = _Writer(self._write, self._write_market)
        #: the kafka-python consumer's metadata requests made while a batch is computed (the
        #: consumer is used by one thread at a time: this one, or the caller's between them)
        self._metadata = ThreadPoolExecutor(1, thread_name_prefix="live-metadata")
        self.assigned: set[int] = set()
        self._assigned_topic_id: str | None = None

    def _wait_ms(self) -> int:
        # the broker holds a fetch up to wait_ms; a produce does not always end a parked fetch on
        # Tansu (0.5 s raised the benchmark's 250-coin p95 from 0.16-0.22 to 0.26-0.32 s), so it
        # stays short (librdkafka's idle round trips cost no Python; 20 ms: more CPU, no gain)
        return max(10, int(self.poll_timeout_s * 1000))

    def _fetcher(self) -> kafka_client.RecordFetcher:
        return kafka_client.RecordFetcher(
            self.bootstrap,
            self.topic,
            self.security,
            client_id=self.client_id,
            fetch_max_wait_ms=self._wait_ms(),
        )

    def _consumer(self):
        """A kafka-python consumer of the topic's metadata and of the stored-offset check's one
        record per partition (the records are the fetcher's)."""
        # never auto-creates the topic: Tansu ignores allow_auto_topic_creation, and a metadata
        # request naming a missing topic would create it (4 partitions) -- after a broker
        # restart, before ingest creates it with the configured count (kafka_client)
        consumer = kafka_client.consumer(
            self.bootstrap,
            self.security,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._wait_ms(),
            metadata_max_age_ms=5000,  # a recreated topic (new topic id) is noticed quickly
        )
        # fresh metadata before each batch (check_recreated) in a round trip, not after
        # kafka-python's 100 ms refresh backoff
        return kafka_client.metadata_backoff(consumer, METADATA_BACKOFF_MS)

    def _unseen_before(self, stored: dict[int, int], timeout_s: float = 3.0) -> list[int]:
        """Partitions whose record just before the stored offset is newer than its coin's last
        row in the state: that record was never consumed, so the stored offset belongs to an
        earlier incarnation of the topic (a memory-only broker restarted and ingest recreated
        and refilled the topic while this process was down). A record consumed before -
        written, or skipped as late - is never newer than its coin's last row."""
        wanted = {p: o - 1 for p, o in stored.items() if o > 0}
        if not wanted:
            return []
        unseen: list[int] = []

        def take(partition: int, records: list) -> bool:
            record = next((r for r in records if r.offset == wanted[partition]), None)
            if record is None:
                # nothing yet: wait; past it (out of range / compacted: kafka-python goes to the
                # earliest offset): nothing to tell
                return bool(records)
            row = contract.parse_value(record.value)
            if type(row) is contract.Invalid:
                return True  # an invalid record: nothing to tell
            coin, ts_ns = row[0], row[-1] * 1000  # raw row: id first, ts (us) last
            last = self.state.last
            if coin not in last.index or ts_ns > int(last.at[coin, "t"]):
                unseen.append(partition)
            return True

        probe = self._consumer()
        try:
            kafka_client.read_each(probe, self.topic, wanted, take, timeout_s)
        except Exception as exc:  # noqa: BLE001 - the check is best effort
            logger.warning("live: could not check the stored offsets (%s)", exc)
        finally:
            probe.close()
        return sorted(unseen)

    def _topic_id(self) -> str | None:
        """The broker's id of the topic as last seen in metadata (a recreated topic has a new
        one); None when unknown or when the broker reports no topic ids."""
        return kafka_client.topic_id(self.consumer, self.topic)  # the cached cluster view

    def check_recreated(self, fresh: bool = False) -> bool:
        """When the topic's id changed since the assignment (deleted and recreated: a broker
        restart, an operator), read every partition again from the beginning: stored offsets
        mean nothing in the new topic. Rows already in price_indicators are skipped by
        ``advance_indicators`` (not newer than their coin's last row), so this re-read writes
        only what is new. Returns True when it repositioned. ``fresh``: ask the broker first
        (the fetcher is another client, whose reconnects do not refresh this one's view)."""
        if fresh:
            self.consumer.topics()  # metadata of all topics (never creates one)
        current = self._topic_id()
        if current is None or self._assigned_topic_id is None or current == self._assigned_topic_id:
            if current is not None and self._assigned_topic_id is None and self.assigned:
                self._assigned_topic_id = current
            return False
        logger.warning(
            "live: topic %s was recreated (id %s -> %s); reading its partitions from the "
            "beginning (rows already written are skipped)",
            self.topic,
            self._assigned_topic_id,
            current,
        )
        self.assigned = set()
        self._assigned_topic_id = None
        # a new fetcher: nothing fetched from the old topic (buffered, in flight) carries over
        self.fetcher.close()
        self.fetcher = self._fetcher()
        self.assign(fresh=True)
        return True

    def assign(self, fresh: bool = False) -> bool:
        """Assign every partition of the topic (new ones too) at its stored offset (from the
        beginning when ``fresh``: the topic was recreated). Partitions the topic no longer has
        (recreated with fewer) are dropped from the assignment."""
        self.consumer.topics()  # fresh metadata of all topics (never creates one)
        partitions = self.consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            return False
        if partitions == self.assigned:
            return True
        gone = sorted(self.assigned - partitions)
        if gone:
            logger.warning(
                "live: %s partitions %s no longer exist (topic recreated with fewer "
                "partitions); no longer read",
                self.topic,
                gone,
            )
        self.writer.flush()  # the connection is the writer's until its batches committed
        stored = {} if fresh else self.store.load_offsets(self.topic)
        unseen = self._unseen_before(
            {p: o for p, o in stored.items() if p in partitions - self.assigned}
        )
        for p in unseen:
            logger.warning(
                "live: the record before stored offset %d of %s[%d] was never read (the topic "
                "was recreated while the consumer was down); reading that partition from the "
                "beginning (rows already written are skipped)",
                stored[p],
                self.topic,
                p,
            )
            del stored[p]
        starts: dict[int, int | None] = {}
        for p in sorted(partitions):
            # a partition read before goes on from where it is; beyond the end of a recreated
            # partition the broker answers "out of range" and the fetcher starts it over
            current = self.fetcher.position(p) if p in self.assigned else None
            starts[p] = current if current is not None else stored.get(p)
        self.fetcher.assign(starts)
        new = sorted(partitions - self.assigned)
        self.assigned = set(partitions)
        self._assigned_topic_id = self._topic_id()
        logger.info(
            "live: reading %s partitions %s from offsets %s",
            self.topic,
            new,
            {p: stored.get(p, "beginning") for p in new},
        )
        return True

    # ------------------------------------------------------------------------------------
    def poll_batch(self) -> kafka_client.Fetched:
        wait_s = max(self.poll_timeout_s, IDLE_POLL_SECONDS)
        records = self.fetcher.poll(wait_s, self.max_batch_records)
        more = records
        while more and len(records) < self.max_batch_records:
            more = self.fetcher.poll(0, self.max_batch_records - len(records))
            records.extend(more)
        return records

    def compute(self, records: kafka_client.Fetched) -> _Computed:
        """One batch's rows and the state they lead to (pure: nothing moves until
        :meth:`submit`, which hands it to the writer - one transaction - and moves the state
        on: the next batch continues from it; see the module docstring)."""
        started = time.perf_counter()
        frame, market, reasons = parse_records(records.values)
        rows, state, skipped = ind.advance_indicators(self.state, frame)
        computed = time.perf_counter()
        return _Computed(records, rows, state, skipped, market, reasons, started, computed)

    def submit(self, batch: _Computed) -> None:
        """Hand a computed batch to the writer; the state moves on to the one it leads to."""
        invalid = len(batch.reasons) - len(batch.market)
        if invalid:
            logger.debug(
                "live: invalid record(s) by reason: %s", Counter(filter(None, batch.reasons))
            )
        skipped = batch.skipped
        if len(skipped):
            logger.debug(
                "live: %d record(s) not newer than their coin's last row (late or duplicate; "
                "the Dagster recompute owns them), e.g. %s",
                len(skipped),
                skipped.head(5)[["id", "ts"]].to_dict("records"),
            )
        records = batch.records
        self.writer.submit(
            batch.rows,
            records.next_offsets,
            batch.market,
            len(records),
            len(skipped),
            invalid,
            batch.started,
            batch.computed,
        )
        self.state = batch.state

    def _write(
        self, rows, next_offsets, market, records, skipped, invalid, started, computed
    ) -> None:
        """The writer thread's part of one batch: its indicator transaction, its price alerts
        and its log line; its market data and offsets follow once no batch came for a while
        (:meth:`_write_market`, :data:`QUIET_SECONDS`), so a poll's last rows are not held up
        by its first ones'. The movers of its snapshots are left to the next batch when that
        one is already waiting with rows of every one of them (a whole-market poll comes in
        several batches: only the last one's ranking of the snapshot counts, and each ranking
        reads the snapshot's rows so far)."""
        writing = time.perf_counter()
        waiting = self.writer.waiting()
        superseded = waiting is not None and set(snapshot_times(rows)) <= set(
            snapshot_times(waiting[0])
        )
        inserted, movers = self.store.write_indicators(rows, movers=not superseded)
        written = time.perf_counter()
        self.alerting.after_batch(self.store.conn, rows)
        if not self._unstored:
            self._unstored_since = time.monotonic()
        self._unstored.append((market, next_offsets))
        if (
            sum(len(f) for f, _ in self._unstored) >= MARKET_MAX_RECORDS
            or time.monotonic() - self._unstored_since >= MARKET_MAX_DELAY_SECONDS
        ):
            self._write_market()  # catching up (batches never pause): bounded all the same
        stats = BatchStats(
            records,
            inserted,
            skipped,
            invalid,
            movers,
            seconds=written - started,
            compute_s=computed - started,
            queued_s=writing - computed,
            write_s=written - writing,
        )
        self.stats.append(stats)
        del self.stats[:-1000]  # the last batches only (tests and benchmarks read them)
        logger.info(
            "live: %d record(s) -> %d row(s), %d mover row(s), %d skipped, %d invalid, %.3f s "
            "(compute %.3f, queued %.3f, write %.3f)",
            stats.records,
            stats.rows,
            stats.movers,
            stats.skipped,
            stats.invalid,
            stats.seconds,
            stats.compute_s,
            stats.queued_s,
            stats.write_s,
        )

    def _write_market(self) -> None:
        """The writer thread's second transaction, for every batch written since the last one:
        the records' market data and the next offsets (:meth:`LiveStore.write_market`)."""
        if not self._unstored:
            return
        import pyarrow as pa

        tables = [t for t, _ in self._unstored if len(t)]
        offsets: dict[int, int] = {}
        for _, batch_offsets in self._unstored:
            for p, o in batch_offsets.items():
                offsets[p] = max(o, offsets.get(p, -1))
        market = pa.concat_tables(tables) if len(tables) > 1 else next(iter(tables), None)
        self.store.write_market(self.topic, market, offsets)
        self._unstored.clear()

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop``; the batches in hand are written before it returns (after an
        error, :meth:`close` still writes what was submitted before it)."""
        self._run(stop)
        self.writer.flush()

    def _run(self, stop: threading.Event) -> None:
        last_check = 0.0
        while not stop.is_set():
            self.writer.check()
            now = time.monotonic()
            if not self.assigned or now - last_check > PARTITION_REFRESH_SECONDS:
                last_check = now
                if not self.assign():
                    logger.info("live: topic %s has no partitions yet; waiting", self.topic)
                    stop.wait(1.0)
                    continue
            if self.check_recreated():
                continue
            records = self.poll_batch()
            if not records:
                continue
            # the broker's view of the topic, asked for while the batch is computed (a round
            # trip of 2-30 ms under load, which came before the computation)
            asked = self._metadata.submit(self.consumer.topics)
            try:
                batch = self.compute(records)
            finally:
                asked.result()  # the broker's answer, or its error
            if self.check_recreated():
                # fetched at offsets of the old topic - in the new one they may skip records
                # that later ones would then make look late: read again from the beginning
                # (the computed batch is dropped: nothing moved)
                continue
            self.submit(batch)

    def close(self) -> None:
        try:
            self._metadata.shutdown(wait=True)
            self.writer.close()
            self.fetcher.close()
            self.consumer.close()
        finally:
            self.store.close()
