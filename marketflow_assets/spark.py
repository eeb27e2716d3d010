"""Common Spark settings shared by the streaming job, the Dagster PySpark resource and the tests."""

from __future__ import annotations

import os
import sys


def ensure_pyspark_python() -> None:
    """Make Spark's Python workers run this interpreter (the venv), not the system python."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def spark_conf(master: str | None = None) -> dict[str, str]:
    """Spark configuration used everywhere: UTC, loopback-bound, small shuffles, quiet UI.

    ``master`` defaults to ``$MARKETFLOW_SPARK_MASTER`` or ``local[*]``.
    """
    master = master or os.environ.get("MARKETFLOW_SPARK_MASTER") or "local[*]"
    conf = {
        "spark.master": master,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": os.environ.get("MARKETFLOW_SPARK_SHUFFLE_PARTITIONS", "4"),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        # Long-running drivers (the streaming job: several jobs per micro-batch, forever) keep
        # the status of finished jobs/stages/SQL executions up to these caps (default 1000 each),
        # UI or not; small caps make the driver's memory plateau early.
        "spark.ui.retainedJobs": "100",
        "spark.ui.retainedStages": "100",
        "spark.ui.retainedTasks": "10000",
        "spark.sql.ui.retainedExecutions": "50",
        "spark.streaming.ui.retainedBatches": "100",
        "spark.sql.streaming.numRecentProgressUpdates": "20",
    }
    if master.startswith("local"):
        conf.update(
            {
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.driver.host": "127.0.0.1",
                "spark.ui.enabled": os.environ.get("MARKETFLOW_SPARK_UI", "false"),
            }
        )
    return conf


def get_spark(master: str | None = None, app_name: str = "marketflow"):
    """Return a (possibly shared) SparkSession configured with :func:`spark_conf`."""
    ensure_pyspark_python()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    for key, value in spark_conf(master).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("MARKETFLOW_SPARK_LOG_LEVEL", "WARN"))
    return spark
