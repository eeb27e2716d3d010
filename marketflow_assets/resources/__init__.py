"""Resources of the Marketflow code location (configured in ``definitions.py``).

* :class:`PostgresResource` - the indicator database (``MARKETFLOW_POSTGRES_URL``),
* :class:`RawDataResource` - the raw Parquet dataset root (``MARKETFLOW_DATA_DIR``),
* :class:`KafkaTopicResource` - the price topic and the streaming job's checkpoint (stream checks),
* :class:`SparkResource` - a Spark session started on first use: a Spark Connect client when
  ``MARKETFLOW_SPARK_REMOTE`` (``sc://host:port``, see
  :mod:`marketflow_assets.runtime.spark_connect`) is
  set - one warm driver shared by all runs - else an in-process driver with
  :func:`marketflow_assets.spark_session.spark_conf`. Inputs up to ``MARKETFLOW_LOCAL_MAX_ROWS``
  rows
  (default 500 000) are computed in process without Spark.
"""

from marketflow_assets.resources.build import build_resources, without_secrets_in_config
from marketflow_assets.resources.kafka import KafkaTopicResource
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.resources.spark import SparkResource

__all__ = [
    "KafkaTopicResource",
    "PostgresResource",
    "RawDataResource",
    "SparkResource",
    "build_resources",
    "without_secrets_in_config",
]
