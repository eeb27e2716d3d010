"""``pyspark`` resource: dagster-pyspark's session, started only when a step needs Spark."""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_pyspark import PySparkResource
from dagster_pyspark.resources import spark_session_from_config
from pydantic import Field

#: Default of :attr:`SparkResource.local_max_rows`: computations over at most this many input
#: rows run in this process on the same pure functions instead of on Spark. One hour of 250
#: coins at 30 s is 30 000 raw rows; for it a Spark job (Parquet scan of ~120 small files, shuffle
#: to the Python workers, Arrow collect) costs ~0.7-4 s against ~0.1-0.3 s in process
#: (``benchmarks/incremental.py``). Backfills of many hours go to Spark, whose cores pay off.
LOCAL_MAX_ROWS = 500_000


class SparkResource(PySparkResource):
    """A Spark session (``spark_config`` as in ``PySparkResource``), created on first use.

    ``PySparkResource`` starts its session when a step begins, so every run would pay a JVM start
    (local master) or a Spark Connect handshake even when the step computes in process. Here the
    session is made on the first ``spark_session`` access and reused for the rest of the run.
    ``local_max_rows``: inputs up to this many rows are computed in process instead of on Spark
    (``MARKETFLOW_LOCAL_MAX_ROWS``; 0 = always Spark).
    """

    local_max_rows: int = Field(
        default=LOCAL_MAX_ROWS,
        ge=0,
        description="Inputs of at most this many rows are computed in process, not on Spark.",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """No session yet: see :attr:`spark_session`."""

    @property
    def spark_session(self) -> Any:
        if self._spark_session is None:
            self._spark_session = spark_session_from_config(self.spark_config)
        return self._spark_session

    def get_session(self) -> Any:
        """The session (started now if needed): a lazy provider for the refresh functions."""
        return self.spark_session
