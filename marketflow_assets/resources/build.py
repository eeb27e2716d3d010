"""The resources of the code location, built in one place: for ``definitions.py`` and for the
commands that run jobs in process (``marketflow refresh``, ``marketflow forecast``)."""

from __future__ import annotations

import dagster as dg

from marketflow_assets.resources.kafka import KafkaTopicResource
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.resources.spark import SparkResource


def build_resources(postgres_url: str | None = None, data_dir: str | None = None) -> dict:
    """The resources; unset values are resolved from the settings when first used."""
    return {
        "postgres": PostgresResource(url=postgres_url),
        "raw_data": RawDataResource(data_dir=data_dir),
        "pyspark": SparkResource(),
        "kafka": KafkaTopicResource(),
    }


def without_secrets_in_config(resources: dict) -> dict:
    """``resources`` with a ``postgres`` resource that carries a literal URL wrapped so that
    Dagster stores no config for it.

    A Pythonic resource's field values become the defaults of the job's config schema, which
    Dagster keeps in the job snapshot in run storage (``runs.db``, zlib-compressed): a literal
    ``postgresql://user:password@...`` would land there. Wrapped as a hardcoded resource it is
    used as is, with no config schema (the code location's resource has ``url=None`` and reads
    ``MARKETFLOW_POSTGRES_URL`` when used, so nothing secret is stored either)."""
    postgres = resources.get("postgres")
    if isinstance(postgres, PostgresResource) and postgres.url:
        return {
            **resources,
            "postgres": dg.ResourceDefinition.hardcoded_resource(
                postgres, description="PostgreSQL (URL kept out of run storage)"
            ),
        }
    return resources
