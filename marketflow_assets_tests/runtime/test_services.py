"""The embedded services are real: a Kafka round trip through Tansu, SQL through PostgreSQL 16."""

from __future__ import annotations

import psycopg2
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from marketflow_assets.runtime.services import (
    EmbeddedKafka,
    ServiceError,
    free_port,
    wait_for_kafka,
    wait_for_postgres,
)


def test_kafka_round_trip(kafka_bootstrap, new_topic):
    topic = new_topic("svc")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(7):
        producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()).get(10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    got = []
    for _ in range(20):
        got += [r.value for recs in consumer.poll(500).values() for r in recs]
        if len(got) >= 7:
            break
    consumer.close()
    assert got == [f"v{i}".encode() for i in range(7)]


def test_postgres_is_postgres_16(postgres_url):
    conn = psycopg2.connect(postgres_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version_num")
            version = int(cur.fetchone()[0])
    finally:
        conn.close()
    assert version >= 160000


def test_unreachable_postgres_is_one_line_error():
    url = f"postgresql://u:secret@127.0.0.1:{free_port()}/db"
    with pytest.raises(ServiceError) as err:
        wait_for_postgres(url, timeout=1)
    message = str(err.value)
    assert message.startswith("MARKETFLOW_POSTGRES_URL unreachable")
    assert "secret" not in message and "\n" not in message


def test_unreachable_kafka_is_clear_error():
    with pytest.raises(ServiceError, match="MARKETFLOW_KAFKA_BOOTSTRAP"):
        wait_for_kafka(f"127.0.0.1:{free_port()}", timeout=2)


def test_embedded_kafka_stops_its_process(tmp_path):
    broker = EmbeddedKafka(tmp_path)
    broker.start()
    proc = broker.proc
    assert proc.poll() is None
    broker.stop()
    assert proc.poll() is not None
