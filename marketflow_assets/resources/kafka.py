"""The Kafka topic the stream checks watch, and where the streaming job keeps its checkpoint."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from marketflow_assets.settings import DLQ_SUFFIX, KafkaSecurity, load_pipeline_settings


class KafkaTopicResource(dg.ConfigurableResource):
    """Bootstrap servers and topic (``MARKETFLOW_KAFKA_BOOTSTRAP`` / ``MARKETFLOW_KAFKA_TOPIC``)
    plus the data dir holding the streaming job's checkpoint (``MARKETFLOW_DATA_DIR``).

    Unset fields are read from the settings when used, not when the definitions load.
    """

    bootstrap: str | None = Field(default=None, description="default MARKETFLOW_KAFKA_BOOTSTRAP")
    topic: str | None = Field(default=None, description="default MARKETFLOW_KAFKA_TOPIC")
    data_dir: str | None = Field(default=None, description="default MARKETFLOW_DATA_DIR")

    @property
    def bootstrap_servers(self) -> str:
        """The configured servers, '' when none (the embedded broker is known only to `up`)."""
        return self.bootstrap or load_pipeline_settings().kafka_bootstrap or ""

    @property
    def security(self) -> KafkaSecurity:
        """Protocol, SASL credentials and TLS files, read from the settings when used: never
        resource config, so no secret reaches Dagster's run storage."""
        return load_pipeline_settings().kafka_security

    @property
    def topic_name(self) -> str:
        return self.topic or load_pipeline_settings().kafka_topic

    @property
    def dlq_topic(self) -> str:
        return self.topic_name + DLQ_SUFFIX

    @property
    def checkpoint_root(self) -> Path:
        root = (
            Path(self.data_dir).expanduser().absolute()
            if self.data_dir
            else load_pipeline_settings().data_dir
        )
        return root / "checkpoints"
