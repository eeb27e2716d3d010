"""``pyspark`` resource: dagster-pyspark's session, started only when a step needs Spark."""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_pyspark import PySparkResource
from dagster_pyspark.resources import spark_session_from_config
from pydantic import Field

from marketflow_assets.settings import load_settings

#: Default of :attr:`SparkResource.local_max_rows`: computations over at most this many input
#: rows run in this process on the same pure functions instead of on Spark (why 500 000:
#: ``docs/DECISIONS.md``).
LOCAL_MAX_ROWS = 500_000


def default_spark_config() -> dict[str, str]:
    """Spark settings from the environment, read when a session is needed: a Spark Connect
    client when ``MARKETFLOW_SPARK_REMOTE`` is set, else
    :func:`marketflow_assets.spark_session.spark_conf`
    (master ``MARKETFLOW_SPARK_MASTER``, default ``local[*]``)."""
    from marketflow_assets.spark_session import spark_conf

    settings = load_settings()
    if settings.spark_remote:
        return {"spark.remote": settings.spark_remote}
    return spark_conf(settings=settings)


class SparkResource(PySparkResource):
    """A Spark session created on first use.

    ``PySparkResource`` starts its session when a step begins, so every run would pay a JVM start
    (local master) or a Spark Connect handshake even when the step computes in process. Here the
    session is made on the first ``spark_session`` access and reused for the rest of the run.
    ``spark_config`` entries override :func:`default_spark_config` (read from the environment at
    that moment, not when the definitions load). ``local_max_rows``: inputs up to this many rows
    are computed in process instead of on Spark (unset: ``MARKETFLOW_LOCAL_MAX_ROWS``, else
    500 000; 0 = always Spark).
    """

    spark_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Spark settings on top of the environment's (MARKETFLOW_SPARK_*).",
    )
    local_max_rows: int | None = Field(
        default=None,
        ge=0,
        description="Inputs of at most this many rows are computed in process, not on Spark.",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """No session yet: see :attr:`spark_session`."""

    @property
    def max_local_rows(self) -> int:
        if self.local_max_rows is not None:
            return self.local_max_rows
        configured = load_settings().local_max_rows
        return LOCAL_MAX_ROWS if configured is None else configured

    @property
    def spark_session(self) -> Any:
        if self._spark_session is None:
            from marketflow_assets.settings import export_pyspark_python

            export_pyspark_python()  # Spark's Python workers must run this interpreter
            config = {**default_spark_config(), **self.spark_config}
            if "spark.remote" in self.spark_config:  # a remote session takes no local settings
                config = dict(self.spark_config)
            self._spark_session = spark_session_from_config(config)
        return self._spark_session

    def get_session(self) -> Any:
        """The session (started now if needed): a lazy provider for the refresh functions."""
        return self.spark_session
