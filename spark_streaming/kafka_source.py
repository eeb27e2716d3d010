"""A Kafka streaming source on Spark 4's Python Data Source API (no Maven connector needed).

Registered as format ``marketflow_kafka``. It yields the same columns as Spark's built-in
``kafka`` source (``key``/``value`` binary, ``topic``, ``partition``, ``offset``, ``timestamp``)
so the job's parsing code is identical for both.

Design
------
* Offsets are ``{topic: {"<partition>": next_offset}}`` -- the JSON layout Spark's own Kafka
  source checkpoints.
* ``partitions(start, end)`` plans one :class:`KafkaRange` per Kafka partition with new data;
  ``read`` runs on the executors and fetches exactly ``[start, end)`` with kafka-python using
  manual ``assign`` + ``seek`` (no consumer group: no group join, no committed group offsets --
  Spark's checkpoint is the only source of truth).
* **True end offsets.** Some brokers (the embedded Tansu broker) report a partition's end offset
  as "base offset of the last record batch + 1", i.e. they under-report by the rest of the last
  batch although those records are readable. A bounded run (``availableNow``) planned on reported
  end offsets would strand that tail for ever. :meth:`KafkaOffsetProbe.end_offsets` therefore
  fetches from ``reported_end - 1`` and takes the position after the last record it actually
  received. On a broker that reports correctly this costs one tiny fetch per partition.
* **Broker reset.** A memory-only broker that restarts comes back with empty topics, so the
  checkpointed start offset can be beyond the topic's current end. That is detected
  (``end < start``) and the partition is re-read from its earliest offset, with a warning,
  instead of failing or waiting for the topic to grow past the stale offset. The new topic may
  also have grown past the stale offset by the time the job looks (the job was down or slow):
  offsets alone cannot tell, so each offset also carries a *stamp* of the record just before it
  (its Kafka timestamp and key checksum, under ``"#stamps"``). When the record now at that
  offset has another stamp, the topic was recreated: the partition is re-read from its earliest
  offset too, and the decision is kept in the batch's end offset (``"#reset"``) so that a
  replayed batch plans the same ranges. A start offset below the earliest available one
  (retention) likewise continues from the earliest, with a warning.
* Topics that do not exist yet yield no partitions (the query idles); partitions that appear
  later start at their earliest offset.

Options (``spark.readStream.format("marketflow_kafka").option(...)``):
``kafka.bootstrap.servers`` (required), ``subscribe`` (one topic, required),
``startingOffsets`` (``earliest`` | ``latest``, default ``earliest``),
``maxOffsetsPerTrigger`` (optional cap on records per micro-batch),
``pollTimeoutMs`` (executor fetch timeout without progress before the task fails, default 60000),
``waitForRecordsMs`` (default 0: with a trigger of 0, ``latestOffset`` holds up to this long
until the broker's end offsets move, so a micro-batch starts when records arrive, not on a
clock; a batch the read limit cut short is not held);
security: ``kafka.security.protocol``, ``kafka.sasl.mechanism``, ``kafka.sasl.username``,
``kafka.sasl.password``, ``kafka.ssl.cafile``, ``kafka.ssl.certfile``, ``kafka.ssl.keyfile``,
``kafka.ssl.check.hostname`` (:func:`marketflow_assets.kafka_client.source_options` writes them
from the settings; Spark redacts the password's value in plans and the UI).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)

from marketflow_assets.kafka_client import (  # noqa: F401 - KafkaOffsetProbe re-exported
    KafkaOffsetProbe,
    Offsets,
    no_auto_create,
    security_from_options,
)
from marketflow_assets.kafka_client import group_less_consumer as _consumer
from marketflow_assets.settings import KafkaSecurity

logger = logging.getLogger(__name__)

FORMAT_NAME = "marketflow_kafka"
# Same columns and types as Spark's built-in Kafka source (minus headers / timestampType).
KAFKA_ROW_SCHEMA = (
    "key BINARY, value BINARY, topic STRING, partition INT, offset BIGINT, timestamp TIMESTAMP"
)

# Extra keys of an offset (``#`` cannot occur in a Kafka topic name): the stamps of the records
# before the offsets, and the partitions a batch re-reads from the earliest offset.
STAMPS = "#stamps"
RESET = "#reset"
# The broker's id of the topic when the offset was made (a recreated topic has a new one).
TOPIC_ID = "#topic_id"


@dataclass(frozen=True)
class KafkaRange(InputPartition):
    """One Spark input partition: offsets ``[start, end)`` of one Kafka partition."""

    bootstrap: str
    topic: str
    partition: int
    start: int
    end: int
    poll_timeout_ms: int = 60000
    security: KafkaSecurity | None = field(default=None, repr=False)


# With waitForRecordsMs: a wait that saw the broker's reported ends hold still answers "nothing
# new" without the full look (true ends past Tansu's short report, stamps, the topic's id) when
# the last full look is younger than this; so a case only the full look sees (a true-end probe
# that timed out under load, a topic recreated to the very same ends) waits at most this long.
FULL_LOOK_EVERY_S = 5.0

# The planned offsets may no longer exist (broker restarted, topic recreated): a range without
# new records for this long is finished when the broker answered "out of range" (the consumer
# went back), or for twice as long when the partition's end offset is not beyond the position.
TRUNCATION_CHECK_S = 15.0


def _ends_at_or_before(consumer, tp, position: int) -> bool:
    try:
        consumer.topics()  # fresh metadata of all topics (never creates one)
        if tp.partition not in (consumer.partitions_for_topic(tp.topic) or set()):
            return True  # the topic (or this partition) is gone: nothing more to read here
        return consumer.end_offsets([tp])[tp] <= position
    except Exception:  # noqa: BLE001 - broker unreachable: not known to be truncated
        return False


def read_range(part: KafkaRange) -> Iterator[tuple]:
    """Yield the records of ``part`` as rows of :data:`KAFKA_ROW_SCHEMA` (runs on executors)."""
    from kafka import TopicPartition

    if part.end <= part.start:
        return
    tp = TopicPartition(part.topic, part.partition)
    c = _consumer(part.bootstrap, f"marketflow-spark-read-{part.partition}", part.security)
    try:
        c.assign([tp])
        c.seek(tp, part.start)
        position = part.start
        reset = False  # the broker answered "offset out of range": the consumer went back
        last_progress = time.monotonic()
        while position < part.end:
            batch = c.poll(timeout_ms=500, max_records=5000).get(tp, [])
            for rec in batch:
                if rec.offset < part.start:
                    continue
                if rec.offset >= part.end:
                    position = part.end
                    break
                ts = dt.datetime.fromtimestamp(rec.timestamp / 1000.0, tz=dt.UTC)
                yield (rec.key, rec.value, part.topic, part.partition, rec.offset, ts)
                position = rec.offset + 1
            consumer_position = c.position(tp)
            reset = reset or consumer_position < position
            position = max(position, min(consumer_position, part.end))
            now = time.monotonic()
            if batch:
                last_progress = now
            elif (reset and now - last_progress > TRUNCATION_CHECK_S) or (
                now - last_progress > 2 * TRUNCATION_CHECK_S and _ends_at_or_before(c, tp, position)
            ):
                # The broker lost the partition (memory-only broker restarted): what was planned
                # is gone. Stop here; the next batch notices the new topic and reads it.
                logger.warning(
                    "Kafka %s[%d]: offsets %d..%d no longer exist (broker restarted or topic "
                    "recreated); this batch ends the range early",
                    part.topic,
                    part.partition,
                    position,
                    part.end - 1,
                )
                return
            elif now - last_progress > part.poll_timeout_ms / 1000.0:
                raise RuntimeError(
                    f"Kafka {part.topic}[{part.partition}]: no record between offset {position} "
                    f"and {part.end} after {part.poll_timeout_ms} ms "
                    f"(broker {part.bootstrap} unreachable or topic truncated?)"
                )
    finally:
        c.close()


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Micro-batch reader; its driver-side methods run in one long-lived Python process."""

    def __init__(self, options):
        # Spark hands options over case-insensitively (lower-cased keys); plain dicts work too.
        opts = {str(k).lower(): v for k, v in dict(options).items()}
        self.bootstrap = opts.get("kafka.bootstrap.servers") or opts.get("bootstrap")
        self.topic = opts.get("subscribe") or opts.get("topic")
        if not self.bootstrap or not self.topic:
            raise ValueError("marketflow_kafka needs options kafka.bootstrap.servers and subscribe")
        self.starting = (opts.get("startingoffsets") or "earliest").lower()
        if self.starting not in ("earliest", "latest"):
            raise ValueError("startingOffsets must be 'earliest' or 'latest'")
        max_offsets = opts.get("maxoffsetspertrigger")
        self.max_offsets = int(max_offsets) if max_offsets else None
        self.poll_timeout_ms = int(opts.get("polltimeoutms") or 60000)
        wait_ms = int(opts.get("waitforrecordsms") or 0)
        if wait_ms < 0:
            raise ValueError("waitForRecordsMs must be >= 0")
        self.wait_s = wait_ms / 1000.0
        self._seen: Offsets | None = None  # reported end offsets at the last look
        self._backlog = False  # the last batch left records for the next (read limit)
        self._full_look_at = float("-inf")  # monotonic time of the last full look (below)
        self.security = security_from_options(opts)
        self._probe: KafkaOffsetProbe | None = None
        self._target: Offsets | None = None  # Trigger.AvailableNow target
        self._latest: Offsets | None = None

    # -- helpers ---------------------------------------------------------------------------
    @property
    def probe(self) -> KafkaOffsetProbe:
        if self._probe is None:
            self._probe = KafkaOffsetProbe(self.bootstrap, self.topic, security=self.security)
        return self._probe

    def _wrap(
        self,
        offsets: Offsets,
        stamps: dict[int, str] | None = None,
        reset: Sequence[int] = (),
        topic_id: str | None = None,
    ) -> dict:
        out: dict = {self.topic: {str(p): int(o) for p, o in sorted(offsets.items())}}
        if topic_id:
            out[TOPIC_ID] = topic_id
        if stamps:
            out[STAMPS] = {str(p): v for p, v in sorted(stamps.items())}
        if reset:
            out[RESET] = sorted(int(p) for p in reset)
        return out

    def _unwrap(self, offset: dict | None) -> Offsets:
        return {int(p): int(o) for p, o in ((offset or {}).get(self.topic) or {}).items()}

    @staticmethod
    def _stamps(offset: dict | None) -> dict[int, str]:
        return {int(p): str(v) for p, v in ((offset or {}).get(STAMPS) or {}).items()}

    def _with_stamps(self, offsets: Offsets, previous: dict | None, reset=()) -> dict:
        """``offsets`` wrapped with the stamp of the record before each offset (reused from
        ``previous`` where the offset did not move)."""
        old_offsets, old_stamps = self._unwrap(previous), self._stamps(previous)
        stamps = {
            p: old_stamps[p]
            for p, o in offsets.items()
            if p not in reset and old_offsets.get(p) == o and p in old_stamps
        }
        need = {p: o - 1 for p, o in offsets.items() if o > 0 and p not in stamps}
        if need:
            stamps.update(self.probe.record_stamps(need))
        return self._wrap(offsets, stamps, reset, self.probe.topic_id())

    def _recreated(self, start: dict, end: Offsets) -> list[int]:
        """Partitions whose record before the checkpointed offset is not the one stamped then
        (the topic was recreated and has grown past that offset meanwhile)."""
        begin_state, stamps = self._unwrap(start), self._stamps(start)
        check = {
            p: s - 1
            for p, s in begin_state.items()
            if p in stamps and s > 0 and p in end and end[p] >= s
        }
        if not check:
            return []
        earliest = self.probe.beginning_offsets(sorted(check))
        check = {p: o for p, o in check.items() if o >= earliest.get(p, 0)}
        now = self.probe.record_stamps(check)
        recreated = [p for p in check if p in now and now[p] != stamps[p]]
        for p in recreated:
            logger.warning(
                "Kafka %s[%d]: the record before checkpointed offset %d is not the one read "
                "then (broker restarted or topic recreated); re-reading from the earliest offset",
                self.topic,
                p,
                begin_state[p],
            )
        return recreated

    def _under_reported(
        self, start: dict, end: Offsets, recreated: list[int], same_topic: bool
    ) -> list[int]:
        """Partitions whose end the broker reports below the checkpointed offset although the
        topic was not reset: the broker reports its end short of records already read (Tansu
        leaves its last record batch out, and the probe that reads past it can time out under
        load). Not a reset when the topic's id is the one checkpointed (``same_topic``; a
        recreated topic has a new one) or, where the broker reports no ids, when the record
        before the checkpoint is still the one stamped then. Re-reading such a partition from
        its earliest offset would read all of it again at every short report."""
        begin_state, stamps = self._unwrap(start), self._stamps(start)
        short = {
            p: s - 1
            for p, s in begin_state.items()
            if s > 0 and p in end and end[p] < s and p not in recreated
        }
        if same_topic or not short:
            return sorted(short)
        check = {p: o for p, o in short.items() if p in stamps}
        if not check:
            return []
        now = self.probe.record_stamps(check)
        return sorted(p for p in check if now.get(p) == stamps[p])

    def _current_end(self) -> Offsets:
        return self.probe.end_offsets(self.probe.partitions())

    # -- DataSourceStreamReader --------------------------------------------------------------
    def initialOffset(self) -> dict:
        parts = self.probe.partitions()
        if self.starting == "latest":
            offsets = self.probe.end_offsets(parts)
        else:
            offsets = self.probe.beginning_offsets(parts)
        logger.info("initial offsets for %s (%s): %s", self.topic, self.starting, offsets)
        return self._with_stamps(offsets, None)

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = self._current_end()
        logger.info("availableNow target offsets for %s: %s", self.topic, self._target)

    def latestOffset(self, start: dict, limit: ReadLimit | None = None) -> dict:
        if self.wait_s and self._target is None and not self._backlog:
            # Spark asks again as soon as this returns (trigger 0): hold the question until
            # records arrive (or wait_s passed), so a micro-batch starts when a poll is in
            before = self._seen
            self._seen = self.probe.await_records(before, self.wait_s)
            quiet = before is not None and self._seen == before
            if quiet and time.monotonic() < self._full_look_at + FULL_LOOK_EVERY_S:
                return start  # the broker's ends did not move: nothing new
        self._full_look_at = time.monotonic()
        begin_state = self._unwrap(start)
        end = self._target if self._target is not None else self._current_end()
        self._latest = dict(end)
        recreated = self._recreated(start, end)
        before, now = (start or {}).get(TOPIC_ID), self.probe.topic_id()
        if before and now and before != now and end:
            logger.warning(
                "Kafka %s: the topic was recreated (id %s -> %s); re-reading every partition "
                "from the earliest offset",
                self.topic,
                before,
                now,
            )
            recreated = sorted(end)
        same_topic = bool(now and before == now)
        for p in self._under_reported(start, end, recreated, same_topic):
            end[p] = begin_state[p]  # nothing new there yet; not a reset
        result: Offsets = {}
        budget = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        self._backlog = False
        from_earliest = [
            p
            for p, e in end.items()
            if begin_state.get(p) is None or e < begin_state[p] or p in recreated
        ]
        earliest = (
            self.probe.beginning_offsets(sorted(from_earliest))
            if budget is not None and from_earliest
            else {}
        )
        for p, e in sorted(end.items()):
            if budget is not None:
                # The read limit bounds every range, also one from the earliest offset (a new
                # partition, or a topic the broker lost, e.g. a memory-only broker restart:
                # partitions() plans it from there; refilled from the ingest spool it can be large)
                base = earliest.get(p, 0) if p in from_earliest else begin_state[p]
                take = max(0, min(e - base, budget))
                budget -= take
                self._backlog |= base + take < e
                e = base + take
            result[p] = e
        # Partitions we know of but which vanished from metadata: while the whole topic is
        # missing (broker restarted, producer has not recreated it yet) keep them (nothing new,
        # no batch). When the topic exists without them it was recreated with fewer
        # partitions: drop them, so that one reappearing later counts as new (read from its
        # earliest offset).
        gone = sorted(set(begin_state) - set(end))
        if gone and end:
            logger.warning(
                "Kafka %s: checkpointed partition(s) %s no longer exist (topic recreated with "
                "fewer partitions); treated as a topic reset: dropped from the offsets, read "
                "from the earliest offset should they reappear",
                self.topic,
                gone,
            )
        else:
            for p in gone:
                result[p] = begin_state[p]
        if result == begin_state and not recreated:
            return start  # nothing new: no batch
        return self._with_stamps(result, start, recreated)

    def getDefaultReadLimit(self) -> ReadLimit:
        if self.max_offsets:
            return ReadMaxRows(self.max_offsets)
        return ReadAllAvailable()

    def reportLatestOffset(self) -> dict | None:
        return self._wrap(self._latest) if self._latest is not None else None

    def partitions(self, start: dict, end: dict) -> Sequence[InputPartition]:
        s_off, e_off = self._unwrap(start), self._unwrap(end)
        planned_on, now = (end or {}).get(TOPIC_ID), self.probe.topic_id()
        if planned_on and now and planned_on != now:
            # A batch planned on a topic that no longer exists (replayed after a restart): its
            # offsets are gone; the next batch sees the new id and reads from the earliest.
            logger.warning(
                "Kafka %s: batch planned on topic id %s, the topic is now %s (recreated); "
                "its ranges are skipped",
                self.topic,
                planned_on,
                now,
            )
            return []
        recreated = set((end or {}).get(RESET) or [])
        for p in recreated:
            s_off.pop(p, None)  # re-read from the earliest offset (decided in latestOffset)
        # Only partitions that exist now are asked about (kafka-python raises KeyError for a
        # partition the topic no longer has); a planned one that is gone has nothing to read.
        present = set(self.probe.existing(e_off)) if e_off else set()
        for p in sorted(set(e_off) - present):
            if e_off[p] > s_off.get(p, 0):
                logger.warning(
                    "Kafka %s[%d]: partition no longer exists (broker restarted or topic "
                    "recreated); its planned offsets %d..%d are skipped",
                    self.topic,
                    p,
                    s_off.get(p, 0),
                    e_off[p] - 1,
                )
        begin = self.probe.beginning_offsets(sorted(present)) if present else {}
        ranges = []
        for p, e in sorted(e_off.items()):
            if p not in present:
                continue
            earliest = begin.get(p, 0)
            s = s_off.get(p)
            if s is None:
                s = earliest
            elif e < s:
                logger.warning(
                    "Kafka %s[%d]: checkpointed offset %d is beyond the topic's end %d (broker "
                    "restarted or topic recreated); re-reading from the earliest offset %d",
                    self.topic,
                    p,
                    s,
                    e,
                    earliest,
                )
                s = earliest
            elif s < earliest:
                logger.warning(
                    "Kafka %s[%d]: offsets %d..%d are no longer available; continuing at %d",
                    self.topic,
                    p,
                    s,
                    earliest - 1,
                    earliest,
                )
                s = earliest
            if e > s:
                ranges.append(
                    KafkaRange(
                        self.bootstrap, self.topic, p, s, e, self.poll_timeout_ms, self.security
                    )
                )
        return ranges

    def read(self, partition: InputPartition) -> Iterator[tuple]:
        return read_range(partition)  # type: ignore[arg-type]

    def commit(self, end: dict) -> None:
        """Nothing to do: offsets live in Spark's checkpoint, never in a consumer group."""

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.close()


class KafkaDataSource(DataSource):
    """``spark.readStream.format("marketflow_kafka")`` -- see the module docstring."""

    @classmethod
    def name(cls) -> str:
        return FORMAT_NAME

    def schema(self) -> str:
        return KAFKA_ROW_SCHEMA

    def streamReader(self, schema) -> DataSourceStreamReader:
        return KafkaStreamReader(self.options)
