"""A topic deleted and recreated with fewer partitions (here: the memory-only Tansu broker
restarts, and the producer recreates the topic): the Spark Python Kafka source and the live
consumer never auto-create the topic themselves (Tansu ignores ``allow_auto_topic_creation``
and would create it with 4 partitions), drop the partitions that are gone instead of failing
(kafka-python's ``KeyError: TopicPartition(...)``), and deliver every new record.

Real Tansu brokers of their own (restarted on the same port) and the session's PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from pyspark.sql.streaming.datasource import ReadAllAvailable

from marketflow_assets.runtime.services import EmbeddedKafka, free_port
from marketflow_assets.settings import lent_test_services
from marketflow_assets_tests.helpers import irregular_rows, read_table
from marketflow_assets_tests.live.live_helpers import (
    in_poll_order,
    publish,
    running_consumer,
    wait_for,
)
from marketflow_assets_tests.streaming.test_spark_kafka_source import produce, read_all, reader
from spark_streaming.kafka_source import RESET, TOPIC_ID, KafkaRange, read_range

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        bool(lent_test_services()[1]), reason="restarts an embedded broker of its own"
    ),
]


def create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def partition_count(bootstrap: str, topic: str) -> int | None:
    """Partitions of ``topic`` (None when missing), asked without naming it (no auto-create)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        c._cluster.need_all_topic_metadata = True
        if topic not in c.topics():
            return None
        return len(c.partitions_for_topic(topic) or ())
    finally:
        c.close()


@pytest.fixture
def broker(tmp_path):
    kafka = EmbeddedKafka(tmp_path / "tansu", port=free_port())
    kafka.start()
    yield kafka
    kafka.stop()


def restart(kafka: EmbeddedKafka) -> str:
    bootstrap = kafka.bootstrap
    kafka.stop()
    assert kafka.start() == bootstrap  # same port, empty memory: the topic is gone
    return bootstrap


def test_source_survives_a_topic_recreated_with_fewer_partitions(broker):
    bootstrap, topic = broker.bootstrap, "src_fewer"
    create(bootstrap, topic, 4)
    for p in range(4):
        produce(bootstrap, topic, 5 + p, partition=p)
    r = reader(bootstrap, topic)
    start = r.initialOffset()
    checkpointed = r.latestOffset(start, ReadAllAvailable())
    assert checkpointed[topic] == {"0": 5, "1": 6, "2": 7, "3": 8}
    assert len(read_all(r, start, checkpointed)) == 26
    r.stop()

    restart(broker)
    # A restarted job asks about the missing topic: no batch, and the topic is NOT created.
    r = reader(bootstrap, topic)
    assert r.latestOffset(checkpointed, ReadAllAvailable()) == checkpointed
    assert r.partitions(checkpointed, checkpointed) == []  # a replayed plan: nothing, no error
    # A range planned before the restart (replayed batch) ends instead of recreating the topic.
    assert list(read_range(KafkaRange(bootstrap, topic, 3, 0, 8, 60_000))) == []
    assert partition_count(bootstrap, topic) is None

    create(bootstrap, topic, 3)  # the producer recreates it (would fail if it existed)
    for p in range(3):
        produce(bootstrap, topic, 2, partition=p)
    # The batch planned before the restart, replayed: planned on the old topic (its id is in
    # the offset), so nothing to read, at once (no waiting for offsets that no longer exist).
    assert checkpointed[TOPIC_ID]
    started = time.monotonic()
    assert r.partitions(start, checkpointed) == []
    assert time.monotonic() - started < 10
    end = r.latestOffset(checkpointed, ReadAllAvailable())
    assert end[topic] == {"0": 2, "1": 2, "2": 2}  # partition 3 dropped (a topic reset)
    assert end[RESET] == [0, 1, 2] and end[TOPIC_ID] != checkpointed[TOPIC_ID]
    # every record of the new topic, from the beginning (offsets beyond the end: reset)
    rows = read_all(r, checkpointed, end)
    assert sorted((row[3], row[4]) for row in rows) == [(p, o) for p in range(3) for o in range(2)]
    assert r.latestOffset(end, ReadAllAvailable()) == end  # nothing new: no batch
    produce(bootstrap, topic, 3, partition=1)
    later = r.latestOffset(end, ReadAllAvailable())
    assert [(row[3], row[4]) for row in read_all(r, end, later)] == [(1, 2), (1, 3), (1, 4)]
    r.stop()
    assert partition_count(bootstrap, topic) == 3


def test_replayed_batch_with_a_vanished_partition_plans_only_existing_ones(broker):
    """The batch in the checkpoint was planned on 4 partitions; the topic now has 3: planning it
    again (a job restarted mid-batch) must not raise KeyError for partition 3."""
    bootstrap, topic = broker.bootstrap, "src_replay"
    create(bootstrap, topic, 3)
    for p in range(3):
        produce(bootstrap, topic, 4, partition=p)
    r = reader(bootstrap, topic)
    try:
        start = {topic: {"0": 0, "1": 0, "2": 0, "3": 0}}
        end = {topic: {"0": 4, "1": 4, "2": 4, "3": 9}}
        parts = r.partitions(start, end)
        assert sorted((p.partition, p.start, p.end) for p in parts) == [
            (0, 0, 4),
            (1, 0, 4),
            (2, 0, 4),
        ]
        assert len(read_all(r, start, end)) == 12
    finally:
        r.stop()


def test_live_consumer_survives_a_topic_recreated_with_fewer_partitions(broker, pg_clean):
    bootstrap, topic = broker.bootstrap, "live_fewer"
    create(bootstrap, topic, 4)
    rows = in_poll_order(irregular_rows(seed=11, coins=8, polls=40))
    head, tail = rows[: len(rows) // 2], rows[len(rows) // 2 :]

    def stored() -> int:
        return len(read_table(pg_clean, "price_indicators"))

    with running_consumer(bootstrap, topic, pg_clean, poll_timeout_s=0.05) as consumer:
        publish(bootstrap, topic, head)
        wait_for(lambda: stored() == len(head), what="the first half")
        assert consumer.assigned == {0, 1, 2, 3}

        restart(broker)
        time.sleep(3)  # the consumer polls the missing topic meanwhile
        assert partition_count(bootstrap, topic) is None  # ... without creating it
        create(bootstrap, topic, 3)
        # as ingest's spool does: the last polls again, then new ones
        cut = head[-1][2] - timedelta(seconds=30)
        publish(bootstrap, topic, [r for r in head if r[2] >= cut] + tail)
        wait_for(lambda: stored() == len(rows), timeout=90, what="every row after the recreation")
        assert consumer.assigned == {0, 1, 2}
    table = read_table(pg_clean, "price_indicators")
    assert not table.duplicated(["coin_id", "ts"]).any()
    assert len(table) == len(rows)


def test_live_consumer_restarted_after_the_topic_was_recreated_reads_it_again(broker, pg_clean):
    """The consumer is down while the topic is recreated and refilled past the stored offsets:
    the record before a stored offset was never read, so that partition is read again."""
    bootstrap, topic = broker.bootstrap, "live_down"
    create(bootstrap, topic, 1)
    rows = in_poll_order(irregular_rows(seed=12, coins=6, polls=40))
    head, tail = rows[:60], rows[60:]

    def stored() -> int:
        return len(read_table(pg_clean, "price_indicators"))

    with running_consumer(bootstrap, topic, pg_clean):
        publish(bootstrap, topic, head)
        wait_for(lambda: stored() == len(head), what="the first part")
    restart(broker)
    create(bootstrap, topic, 1)
    publish(bootstrap, topic, tail)  # more records than the stored offset: offsets look fine
    assert len(tail) > len(head)
    with running_consumer(bootstrap, topic, pg_clean):
        wait_for(lambda: stored() == len(rows), timeout=60, what="the recreated topic's rows")
    table = read_table(pg_clean, "price_indicators")
    assert not table.duplicated(["coin_id", "ts"]).any()
