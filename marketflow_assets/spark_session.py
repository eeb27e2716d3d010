"""Common Spark settings shared by the streaming job, the Dagster PySpark resource and the tests."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from marketflow_assets.settings import (
    Settings,
    export_pyspark_python,
    export_spark_local_ip,
    load_settings,
)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: The drivers' log4j2 configuration (WARN and up; known non-problems at ERROR).
LOG4J2 = Path(__file__).with_name("spark_log4j2.properties").as_uri()
#: JVM options of the long-running drivers (the streaming job, the Spark Connect server): the
#: serial collector (no per-region bookkeeping, no GC threads; its pauses are milliseconds at
#: these heap sizes) and a small initial heap (the JVM's default is 1/64 of the machine's RAM,
#: committed and touched whether the driver needs it or not); the heap grows up to
#: ``spark.driver.memory`` when a batch or a backfill needs it.
LEAN_JVM_OPTIONS = "-XX:+UseSerialGC -Xms48m"


def ensure_pyspark_python() -> None:
    """Make Spark's Python workers run this interpreter (the venv), not the system python."""
    export_pyspark_python()


def is_loopback_master(master: str) -> bool:
    """True for ``local[...]`` and for a cluster master on this machine's loopback
    (``spark://127.0.0.1:7077``, ``spark://localhost:7077``): executors then reach the driver on
    127.0.0.1, so the driver needs no other interface."""
    if master.startswith("local"):
        return True
    hosts = [urlsplit("x://" + part).hostname for part in master.split("://", 1)[-1].split(",")]
    return master.startswith("spark://") and all(h in LOOPBACK_HOSTS for h in hosts)


def spark_conf(master: str | None = None, settings: Settings | None = None) -> dict[str, str]:
    """Spark configuration used everywhere: UTC, loopback-bound, small shuffles, quiet UI.

    ``master`` defaults to ``MARKETFLOW_SPARK_MASTER`` or ``local[*]``. With a loopback master
    (:func:`is_loopback_master`) the driver listens on 127.0.0.1 only and its web UI is off
    (``MARKETFLOW_SPARK_UI=true`` turns it on); with a remote cluster Spark's defaults apply
    (``spark.driver.host`` etc. from ``$SPARK_CONF_DIR/spark-defaults.conf``, docs/DEPLOY.md).
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
        "spark.driver.extraJavaOptions": f"-Duser.timezone=UTC -Dlog4j2.configurationFile={LOG4J2}",
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
    if is_loopback_master(master):
        conf.update(
            {
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.driver.host": "127.0.0.1",
                "spark.ui.enabled": settings.spark_ui,
            }
        )
    return conf


def long_running_driver_conf(conf: dict[str, str], memory: str) -> dict[str, str]:
    """``conf`` (:func:`spark_conf`) for a driver that runs as long as ``marketflow up``: a heap of
    ``memory`` (``spark.driver.memory``) and :data:`LEAN_JVM_OPTIONS`. Applies when the driver's
    JVM is launched with this configuration (``spark-submit --conf``, or a Python driver
    starting its own JVM), not to a JVM that already runs."""
    java = f"{conf.get('spark.driver.extraJavaOptions', '')} {LEAN_JVM_OPTIONS}".strip()
    return {**conf, "spark.driver.memory": memory, "spark.driver.extraJavaOptions": java}


def get_spark(
    master: str | None = None, app_name: str = "marketflow", driver_memory: str | None = None
):
    """Return a (possibly shared) SparkSession configured with :func:`spark_conf`; with
    ``driver_memory``, for a long-running driver (:func:`long_running_driver_conf`)."""
    settings = load_settings()
    export_pyspark_python()
    conf = spark_conf(master, settings)
    if driver_memory:
        conf = long_running_driver_conf(conf, driver_memory)
    if is_loopback_master(conf["spark.master"]):
        # a remote cluster's executors must reach the driver on a routable address
        export_spark_local_ip()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark_log_level)
    return spark
