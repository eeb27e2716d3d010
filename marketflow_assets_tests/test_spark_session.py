"""Spark settings: which masters keep the driver on loopback."""

from __future__ import annotations

import pytest

from marketflow_assets.spark_session import is_loopback_master, spark_conf


@pytest.mark.parametrize(
    ("master", "loopback"),
    [
        ("local[*]", True),
        ("local[2]", True),
        ("spark://127.0.0.1:7077", True),
        ("spark://localhost:7077", True),
        ("spark://127.0.0.1:7077,localhost:7078", True),
        ("spark://spark-master:7077", False),
        ("spark://127.0.0.1:7077,10.0.0.5:7077", False),
        ("k8s://https://127.0.0.1:6443", False),
        ("yarn", False),
    ],
)
def test_loopback_masters(master, loopback):
    assert is_loopback_master(master) is loopback


def test_driver_binds_loopback_only_for_loopback_masters(monkeypatch):
    monkeypatch.delenv("MARKETFLOW_SPARK_UI", raising=False)
    cluster = spark_conf("spark://127.0.0.1:7077")
    assert cluster["spark.driver.bindAddress"] == cluster["spark.driver.host"] == "127.0.0.1"
    assert cluster["spark.ui.enabled"] == "false"
    remote = spark_conf("spark://spark-master:7077")
    assert "spark.driver.host" not in remote and "spark.driver.bindAddress" not in remote
    assert remote["spark.master"] == "spark://spark-master:7077"


def test_long_running_drivers_get_a_bounded_heap_and_lean_jvm_options():
    from marketflow_assets.runtime.spark_connect import connect_server_command
    from marketflow_assets.settings import ConfigError, load_settings
    from marketflow_assets.spark_session import LEAN_JVM_OPTIONS, long_running_driver_conf

    settings = load_settings({})
    assert (settings.spark_driver_memory, settings.spark_connect_memory) == ("512m", "1g")
    assert settings.spark_max_offsets_per_trigger == 30000
    custom = load_settings(
        {
            "MARKETFLOW_SPARK_DRIVER_MEMORY": "2G",
            "MARKETFLOW_SPARK_CONNECT_MEMORY": "768m",
            "MARKETFLOW_SPARK_MAX_OFFSETS_PER_TRIGGER": "60000",
        }
    )
    assert (custom.spark_driver_memory, custom.spark_connect_memory) == ("2g", "768m")
    assert custom.spark_max_offsets_per_trigger == 60000
    for name, bad in (
        ("MARKETFLOW_SPARK_DRIVER_MEMORY", "256m"),  # Spark refuses a driver below 450 MB
        ("MARKETFLOW_SPARK_DRIVER_MEMORY", "512"),  # bytes: no unit
        ("MARKETFLOW_SPARK_CONNECT_MEMORY", "lots"),
        ("MARKETFLOW_SPARK_MAX_OFFSETS_PER_TRIGGER", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: bad})

    conf = long_running_driver_conf(spark_conf("local[2]"), "512m")
    assert conf["spark.driver.memory"] == "512m"
    java = conf["spark.driver.extraJavaOptions"]
    assert java.startswith("-Duser.timezone=UTC") and java.endswith(LEAN_JVM_OPTIONS)
    command = connect_server_command(15002, "local[2]")
    assert "spark.driver.memory=1g" in command
    assert any(LEAN_JVM_OPTIONS in arg for arg in command)
