"""``marketflow refresh`` through a real Spark Connect server (MARKETFLOW_SPARK_REMOTE).

Runs the command in a child process, as ``dagster dev`` runs each run in its own process: a
process that already hosts a local Spark driver (this test session's) cannot open a remote one.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from marketflow_assets_tests.helpers import (
    assert_indicators_match_reference,
    irregular_rows,
    read_table,
    write_raw_parquet,
)

pytestmark = pytest.mark.stack

CLI = "import sys; from marketflow_assets.cli import main; sys.exit(main(sys.argv[1:]))"

pytest.importorskip("grpc_status", reason="pyspark[connect] client extras are not installed")


def test_refresh_runs_on_a_spark_connect_server(tmp_path, data_dir, pg_clean):
    from marketflow_assets.runtime.spark_connect import EmbeddedSparkConnect

    rows = irregular_rows(seed=8, coins=4, polls=30)
    write_raw_parquet(data_dir / "raw_prices", rows)
    server = EmbeddedSparkConnect(tmp_path / "spark-connect", master="local[2]")
    with server as remote:
        env = dict(os.environ)
        env.pop("DAGSTER_HOME", None)
        env.update(
            MARKETFLOW_SPARK_REMOTE=remote,
            MARKETFLOW_POSTGRES_URL=pg_clean,
            MARKETFLOW_DATA_DIR=str(data_dir),
            MARKETFLOW_LOCAL_MAX_ROWS="0",  # this small input would otherwise skip Spark
        )
        done = subprocess.run(
            [sys.executable, "-c", CLI, "refresh"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-6000:]
        assert "refresh: done" in done.stdout
        assert "coins, spark)" in done.stdout  # computed on the server, not in process
        proc = server.proc
    assert proc.poll() is not None  # the server is stopped, no orphan
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), rows)
