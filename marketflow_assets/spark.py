"""Common Spark settings shared by the streaming job, the Dagster PySpark resource and the tests."""

from __future__ import annotations

from marketflow_assets.settings import (
    Settings,
    export_pyspark_python,
    export_spark_local_ip,
    load_settings,
)


def ensure_pyspark_python() -> None:
    """Make Spark's Python workers run this interpreter (the venv), not the system python."""
    export_pyspark_python()


def spark_conf(master: str | None = None, settings: Settings | None = None) -> dict[str, str]:
    """Spark configuration used everywhere: UTC, loopback-bound, small shuffles, quiet UI.

    ``master`` defaults to ``MARKETFLOW_SPARK_MASTER`` or ``local[*]``.
    """
    settings = settings or load_settings()
    master = master or settings.spark_master
    conf = {
        "spark.master": master,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": settings.spark_shuffle_partitions,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    if master.startswith("local"):
        conf.update(
            {
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.driver.host": "127.0.0.1",
                "spark.ui.enabled": settings.spark_ui,
            }
        )
    return conf


def get_spark(master: str | None = None, app_name: str = "marketflow"):
    """Return a (possibly shared) SparkSession configured with :func:`spark_conf`."""
    settings = load_settings()
    export_pyspark_python()
    export_spark_local_ip()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    for key, value in spark_conf(master, settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark_log_level)
    return spark
