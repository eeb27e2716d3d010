"""The pyspark resource through a real Spark Connect server (MARKETFLOW_SPARK_REMOTE)."""

from __future__ import annotations

import dagster as dg
import pytest
from asset_helpers import partition_keys, read_table, write_raw_parquet
from test_indicator_assets import ASSETS, SELECTION, assert_indicators_match_reference
from test_indicators import irregular_rows

from marketflow_assets.assets.indicators import price_indicators
from marketflow_assets.resources import build_resources

pytest.importorskip("grpc_status", reason="pyspark[connect] client extras are not installed")


def test_assets_run_on_a_spark_connect_server(tmp_path, data_dir, pg_clean, monkeypatch):
    from pyspark.sql.connect.session import SparkSession as RemoteSparkSession

    from marketflow_assets.resources.spark_connect import EmbeddedSparkConnect

    rows = irregular_rows(seed=8, coins=4, polls=30)
    write_raw_parquet(data_dir / "raw_prices", rows)
    keys = partition_keys(price_indicators, min(r[2] for r in rows), max(r[2] for r in rows))
    server = EmbeddedSparkConnect(tmp_path / "spark-connect", master="local[2]")
    with server as remote:
        monkeypatch.setenv("MARKETFLOW_SPARK_REMOTE", remote)
        resources = build_resources(pg_clean, str(data_dir))
        assert resources["pyspark"].spark_config == {"spark.remote": remote}
        instance = dg.DagsterInstance.ephemeral()
        try:
            for key in keys:  # one run per partition, each continuing from stored state
                result = dg.materialize(
                    ASSETS,
                    selection=SELECTION,
                    partition_key=key,
                    resources=resources,
                    instance=instance,
                )
                assert result.success
        finally:
            session = RemoteSparkSession.getActiveSession()
            if session is not None:
                session.stop()
        assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), rows)
        proc = server.proc
    assert proc.poll() is not None  # stopped, no orphan
