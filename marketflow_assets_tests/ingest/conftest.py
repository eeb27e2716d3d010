"""Fixtures of the ingest tests: the recorded real CoinGecko page, topic readers, CLI args."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pytest

from marketflow_assets.ingest import command

RECORDED_PAGE = "coingecko/markets_top9_2023-03-15_usd.json"


@pytest.fixture(scope="session")
def recorded_page(shared_dir: Path) -> list[dict[str, Any]]:
    """The real /coins/markets answer kept in ../shared (read in place, never copied)."""
    path = shared_dir / RECORDED_PAGE
    if not path.is_file():
        pytest.skip(f"{path} is absent (recorded CoinGecko response)")
    return json.loads(path.read_text())


def read_topic(
    bootstrap: str, topic: str, expected: int, timeout: float = 15.0, settle: float = 1.0
) -> list[dict[str, Any]]:
    """Every message of ``topic`` as dicts (key, value, partition, offset).

    Tansu under-reports end offsets by its last batch, so this reads until ``expected``
    messages arrived (or ``timeout``), then keeps polling for ``settle`` seconds so that
    duplicates beyond ``expected`` would be seen too. Manual assignment, no consumer group.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        deadline = time.monotonic() + timeout
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.1)
        assert partitions, f"topic {topic} not found"
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        out: list[dict[str, Any]] = []
        settle_until = None
        while True:
            now = time.monotonic()
            if settle_until is None and (len(out) >= expected or now > deadline):
                settle_until = now + settle
            if settle_until is not None and now > settle_until:
                break
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    out.append(
                        {
                            "key": r.key.decode() if r.key is not None else None,
                            "value": json.loads(r.value),
                            "partition": tp.partition,
                            "offset": r.offset,
                        }
                    )
        return out
    finally:
        consumer.close()


@pytest.fixture
def topic_reader(kafka_bootstrap):
    def read(topic: str, expected: int, timeout: float = 15.0, settle: float = 1.0):
        return read_topic(kafka_bootstrap, topic, expected, timeout, settle)

    return read


@pytest.fixture
def ingest_args():
    """``ingest_args("--source", "simulate", ...)`` -> Namespace from the command's own parser."""

    def parse(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        return parser.parse_args(list(argv))

    return parse
