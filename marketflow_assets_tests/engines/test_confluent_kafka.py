"""A second Kafka client reads what ``marketflow ingest`` wrote: the wire format is plain Kafka.

``marketflow ingest`` publishes with kafka-python; here confluent-kafka (librdkafka, a different
implementation of the protocol) consumes the topic and its dead-letter topic from the embedded
broker, without a consumer group, and finds every record: key = coin id (UTF-8), value = UTF-8 JSON
with the CoinGecko fields, the poll's ``ts`` and ``schema_version`` 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engines, pytest.mark.timeout(180)]

confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka (dev extra)")

MARKETFLOW = Path(sys.executable).parent / "marketflow"
RECORDED_PAGE = "coingecko/markets_top9_2023-03-15_usd.json"
POLL_TS = ["2023-03-15T12:00:00Z", "2023-03-15T12:00:30Z"]


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list:
    """Every message of ``topic`` (all partitions, from the beginning), read by confluent-kafka.

    Reads until ``expected`` messages arrived, then one more second to see any extra ones.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "marketflow-confluent-reader",  # required by librdkafka; never joined
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=15)
        partitions = sorted(meta.topics[topic].partitions)
        assert partitions, f"{topic} has no partitions"
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out, settle_until = [], None
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if settle_until is None and (len(out) >= expected or now > deadline):
                settle_until = now + 1.0
            if settle_until is not None and now > settle_until:
                return out
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            out.append(msg)
    finally:
        consumer.close()


def test_confluent_kafka_reads_what_ingest_wrote(shared_dir, kafka_bootstrap, tmp_path):
    page_path = shared_dir / RECORDED_PAGE
    if not page_path.is_file():
        pytest.skip(f"{page_path} is absent (recorded CoinGecko response)")
    page = json.loads(page_path.read_text())
    invalid = dict(page[0], id="broken-coin", current_price=-1)
    replay = tmp_path / "polls.jsonl"
    replay.write_text(
        json.dumps({"ts": POLL_TS[0], "coins": page})
        + "\n"
        + json.dumps({"ts": POLL_TS[1], "coins": [*page, invalid]})
        + "\n"
    )
    topic = f"crypto_prices_{uuid.uuid4().hex[:10]}"  # ingest creates it and its _dlq
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETFLOW_", "COINGECKO_"))}
    env.update(
        MARKETFLOW_KAFKA_BOOTSTRAP=kafka_bootstrap,
        MARKETFLOW_KAFKA_TOPIC=topic,
        MARKETFLOW_DATA_DIR=str(tmp_path / "data"),
    )
    cmd = [str(MARKETFLOW), "ingest", "--source", "replay", "--replay-file", str(replay)]
    res = subprocess.run(
        [*cmd, "--once", "--partitions", "3"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]

    messages = consume_all(kafka_bootstrap, topic, expected=2 * len(page))
    assert len(messages) == 2 * len(page)
    assert len({m.partition() for m in messages}) > 1  # spread over the topic's partitions
    seen = Counter()
    recorded = {coin["id"]: coin for coin in page}
    for msg in messages:
        key = msg.key().decode("utf-8")
        value = json.loads(msg.value().decode("utf-8"))
        assert key == value["id"]
        assert value["schema_version"] == 1
        assert value["ts"] in POLL_TS
        assert datetime.fromisoformat(value["ts"].replace("Z", "+00:00")).utcoffset().seconds == 0
        coin = recorded[key]
        for field in ("symbol", "name", "market_cap_rank", "last_updated"):
            assert value[field] == coin[field], field
        assert value["current_price"] == pytest.approx(coin["current_price"], rel=1e-12)
        seen[(key, value["ts"])] += 1
    assert seen == Counter({(c, ts): 1 for c in recorded for ts in POLL_TS})  # each exactly once
    # one coin's messages stay in one partition (keyed)
    partitions_of = {}
    for msg in messages:
        partitions_of.setdefault(msg.key(), set()).add(msg.partition())
    assert all(len(p) == 1 for p in partitions_of.values())

    dead = consume_all(kafka_bootstrap, topic + "_dlq", expected=1)
    assert len(dead) == 1
    letter = json.loads(dead[0].value().decode("utf-8"))
    assert letter["reason"] and "price" in letter["reason"]
    assert "broken-coin" in json.dumps(letter)
