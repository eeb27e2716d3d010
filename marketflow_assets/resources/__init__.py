"""Resources of the Marketflow code location, configured from the environment.

* ``postgres`` - the indicator database (``MARKETFLOW_POSTGRES_URL``),
* ``raw_data`` - the raw Parquet dataset root (``MARKETFLOW_DATA_DIR``),
* ``kafka`` - the price topic and the streaming job's checkpoint, watched by the stream checks,
* ``pyspark`` - a Spark session (:class:`.spark.SparkResource`, started on first use): a Spark
  Connect client when ``MARKETFLOW_SPARK_REMOTE`` (``sc://host:port``, see :mod:`.spark_connect`)
  is set - one warm driver shared by all runs - else an in-process driver with
  :func:`marketflow_assets.spark.spark_conf` (master from ``MARKETFLOW_SPARK_MASTER``, default
  ``local[*]``). Inputs up to ``MARKETFLOW_LOCAL_MAX_ROWS`` rows (default 500 000) are computed in
  process without Spark.
"""

from __future__ import annotations

import os

import dagster as dg

from marketflow_assets.resources.kafka import KafkaTopicResource
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.resources.spark import SparkResource
from marketflow_assets.resources.spark_connect import SPARK_REMOTE_ENV
from marketflow_assets.settings import parse_local_max_rows
from marketflow_assets.spark import ensure_pyspark_python, spark_conf

ensure_pyspark_python()  # Spark's Python workers must run this interpreter (the venv)


def pyspark_config() -> dict[str, str]:
    """``spark_config`` of the ``pyspark`` resource (read when the definitions load)."""
    remote = os.environ.get(SPARK_REMOTE_ENV, "").strip()
    if remote:
        return {"spark.remote": remote}
    return spark_conf()


def build_resources(
    postgres_url: str | dg.EnvVar | None = None, data_dir: str | dg.EnvVar | None = None
) -> dict[str, dg.ConfigurableResource]:
    """Resource dict; defaults read the environment at run time (``dg.EnvVar``)."""
    limit = parse_local_max_rows(os.environ.get("MARKETFLOW_LOCAL_MAX_ROWS"))
    local = {} if limit is None else {"local_max_rows": limit}
    return {
        "postgres": PostgresResource(url=postgres_url or dg.EnvVar("MARKETFLOW_POSTGRES_URL")),
        "raw_data": RawDataResource(data_dir=data_dir or dg.EnvVar("MARKETFLOW_DATA_DIR")),
        "pyspark": SparkResource(spark_config=pyspark_config(), **local),
        "kafka": KafkaTopicResource.from_settings(),
    }


RESOURCES = build_resources()

__all__ = ["RESOURCES", "PostgresResource", "RawDataResource", "SparkResource", "build_resources"]
