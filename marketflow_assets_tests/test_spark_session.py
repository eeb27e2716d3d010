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
