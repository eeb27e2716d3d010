"""The Kafka client code every Marketflow component shares (kafka-python): group-less consumers
that never auto-create a topic, and :class:`KafkaOffsetProbe`, the driver-side view of a topic's
partitions and their *true* beginning/end offsets.

Used by the Spark source (:mod:`spark_streaming.kafka_source`), the lag monitor
(:mod:`marketflow_assets.monitoring.lag`) and ``marketflow up``. **True end offsets:** some
brokers (the embedded Tansu broker) report a partition's end offset as "base offset of the last
record batch + 1", i.e. they under-report by the rest of the last batch although those records
are readable; :meth:`KafkaOffsetProbe.end_offsets` fetches from ``reported_end - 1`` and takes
the position after the last record it actually received.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

logger = logging.getLogger(__name__)

Offsets = dict[int, int]  # partition -> next offset to read


def no_auto_create(consumer):
    """Make ``consumer`` never cause a topic to be auto-created, and return it.

    kafka-python sends ``allow_auto_topic_creation=False`` (``allow_auto_create_topics``), but
    the Tansu broker ignores that flag: any metadata request *naming* a missing topic creates it
    with Tansu's default partition count (4) -- ``beginning_offsets`` / ``end_offsets`` / a fetch
    of an assigned partition all send one. A source asking about the topic right after a broker
    restart therefore created it before the producer did (with the wrong partition count).
    Requesting metadata for *all* topics instead never creates one; a missing topic then just
    has no partitions (offset look-ups time out, fetches return nothing).
    """
    cluster = getattr(consumer, "_cluster", None)
    if cluster is not None and hasattr(cluster, "need_all_topic_metadata"):
        cluster.need_all_topic_metadata = True
    return consumer


def group_less_consumer(bootstrap: str, client_id: str, **extra):
    """A group-less kafka-python consumer (manual assignment only; nothing is ever committed;
    never auto-creates a topic, see :func:`no_auto_create`)."""
    from kafka import KafkaConsumer

    return no_auto_create(
        KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            allow_auto_create_topics=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            request_timeout_ms=30000,
            **extra,
        )
    )


class KafkaOffsetProbe:
    """Driver-side view of a topic's partitions and their *true* beginning/end offsets."""

    def __init__(
        self, bootstrap: str, topic: str, client_id: str = "marketflow-spark-offsets", **config
    ):
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_id = client_id
        self.config = config  # extra kafka-python consumer settings
        self._consumer = None

    @property
    def consumer(self):
        if self._consumer is None:
            self._consumer = group_less_consumer(self.bootstrap, self.client_id, **self.config)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def partitions(self) -> list[int]:
        """Current partition ids of the topic (fresh metadata); ``[]`` if it does not exist."""
        topics = self.consumer.topics()  # always a remote metadata call
        if self.topic not in topics:
            return []
        return sorted(self.consumer.partitions_for_topic(self.topic) or [])

    def topic_id(self) -> str | None:
        """The broker's id of the topic (fresh metadata); None when missing or not reported."""
        self.consumer.topics()  # fresh metadata of all topics
        try:
            value = self.consumer._cluster.topic_id(self.topic)  # kafka-python's cluster view
        except Exception:  # noqa: BLE001 - an older client
            return None
        return str(value) if value else None

    def existing(self, partitions) -> list[int]:
        """Those of ``partitions`` the topic has now (offsets may only be asked for these: a
        missing partition raises ``KeyError`` in kafka-python, a missing topic times out)."""
        wanted = {int(p) for p in partitions}
        return sorted(wanted & set(self.partitions())) if wanted else []

    def record_stamps(self, offsets: Offsets, timeout_s: float = 2.0) -> dict[int, str]:
        """``{partition: stamp}`` of the records at ``offsets`` (``"<timestamp ms>:<crc32 of
        key>"``); partitions whose record did not arrive within ``timeout_s`` are left out."""
        import zlib

        from kafka import TopicPartition

        present = set(self.existing(offsets))
        offsets = {p: o for p, o in offsets.items() if p in present}
        if not offsets:
            return {}
        c = self.consumer
        tps = {p: TopicPartition(self.topic, p) for p in offsets}
        c.assign(list(tps.values()))
        for p, off in offsets.items():
            c.seek(tps[p], off)
        stamps: dict[int, str] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(stamps) < len(offsets) and time.monotonic() < deadline:
                for tp, recs in c.poll(timeout_ms=200, update_offsets=True).items():
                    for r in recs:
                        if r.offset == offsets[tp.partition]:
                            stamps[tp.partition] = f"{r.timestamp}:{zlib.crc32(r.key or b'')}"
                    if tp.partition not in stamps:  # past it (compacted away): stop waiting
                        if recs and recs[-1].offset >= offsets[tp.partition]:
                            stamps.setdefault(tp.partition, "")
                            c.pause(tp)
                    else:
                        c.pause(tp)
        finally:
            c.resume(*tps.values())
            c.assign([])
        return {p: v for p, v in stamps.items() if v}

    def beginning_offsets(self, partitions: Sequence[int]) -> Offsets:
        """Earliest offsets of those of ``partitions`` that exist (the others are left out)."""
        from kafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in self.existing(partitions)]
        if not tps:
            return {}
        return {tp.partition: off for tp, off in self.consumer.beginning_offsets(tps).items()}

    def end_offsets(self, partitions: Sequence[int], probe_timeout_s: float = 2.0) -> Offsets:
        """True end offsets: reported end, extended by fetching past it (see module doc)."""
        from kafka import TopicPartition

        partitions = self.existing(partitions)  # missing ones are left out
        if not partitions:
            return {}
        c = self.consumer
        tps = [TopicPartition(self.topic, p) for p in partitions]
        reported = {tp.partition: off for tp, off in c.end_offsets(tps).items()}
        begin = self.beginning_offsets(partitions)
        probe = [tp for tp in tps if reported[tp.partition] > begin.get(tp.partition, 0)]
        true_end = dict(reported)
        if not probe:
            return true_end
        c.assign(probe)
        for tp in probe:
            c.seek(tp, reported[tp.partition] - 1)
        pending = {tp.partition for tp in probe}
        deadline = time.monotonic() + probe_timeout_s
        while pending and time.monotonic() < deadline:
            records = c.poll(timeout_ms=200, max_records=1_000_000, update_offsets=True)
            for tp, recs in records.items():
                if recs:
                    last = recs[-1].offset + 1
                    true_end[tp.partition] = max(true_end[tp.partition], last)
                    pending.discard(tp.partition)
        for tp in probe:
            # position() is the offset after the last record handed out (covers empty polls).
            try:
                true_end[tp.partition] = max(true_end[tp.partition], c.position(tp))
            except Exception:  # pragma: no cover - position unknown after a failed fetch
                pass
        c.assign([])
        if pending:
            logger.debug("end-offset probe got no record from partitions %s", sorted(pending))
        return true_end
