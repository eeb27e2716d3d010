"""The Kafka topic the stream checks watch, and where the streaming job keeps its checkpoint."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from marketflow_assets.settings import DLQ_SUFFIX, load_pipeline_settings


class KafkaTopicResource(dg.ConfigurableResource):
    """Bootstrap servers and topic (``MARKETFLOW_KAFKA_BOOTSTRAP`` / ``MARKETFLOW_KAFKA_TOPIC``)
    plus the data dir holding the streaming job's checkpoint (``MARKETFLOW_DATA_DIR``)."""

    bootstrap: str = ""
    topic: str = "crypto_prices"
    data_dir: str = "data"

    @property
    def dlq_topic(self) -> str:
        return self.topic + DLQ_SUFFIX

    @property
    def checkpoint_root(self) -> Path:
        return Path(self.data_dir).expanduser().absolute() / "checkpoints"

    @classmethod
    def from_settings(cls) -> KafkaTopicResource:
        settings = load_pipeline_settings()
        return cls(
            bootstrap=settings.kafka_bootstrap or "",
            topic=settings.kafka_topic,
            data_dir=str(settings.data_dir),
        )
