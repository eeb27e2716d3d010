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


def test_refresh_through_a_server_started_on_the_first_connection(tmp_path, data_dir, pg_clean):
    """``marketflow up``'s Spark Connect URL before the server runs: nothing starts until a
    client connects; the first client (a refresh computing on Spark, as a backfill does) makes
    the server start, waits for it and is relayed to it; the result is the same."""
    from marketflow_assets.runtime.services import free_port
    from marketflow_assets.runtime.spark_connect import EmbeddedSparkConnect, StartOnConnect

    rows = irregular_rows(seed=9, coins=4, polls=30)
    write_raw_parquet(data_dir / "raw_prices", rows)
    server = EmbeddedSparkConnect(tmp_path / "spark-connect", master="local[2]")
    relay = StartOnConnect(free_port(), server.port)
    assert not relay.wanted.wait(2)  # nobody asked: no JVM
    env = dict(os.environ)
    env.pop("DAGSTER_HOME", None)
    env.update(
        MARKETFLOW_SPARK_REMOTE=f"sc://127.0.0.1:{relay.port}",
        MARKETFLOW_POSTGRES_URL=pg_clean,
        MARKETFLOW_DATA_DIR=str(data_dir),
        MARKETFLOW_LOCAL_MAX_ROWS="0",
    )
    refresh = subprocess.Popen(
        [sys.executable, "-c", CLI, "refresh"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.wanted.wait(120), "the refresh never connected"
        server.launch()  # what `up`'s supervisor does then; the relay waits for its port
        out, err = refresh.communicate(timeout=300)
        assert refresh.returncode == 0, err[-6000:]
        assert "coins, spark)" in out  # computed on the server, through the relay
        assert server.proc is not None and server.proc.poll() is None
    finally:
        if refresh.poll() is None:
            refresh.kill()
            refresh.wait()
        relay.close()
        server.stop()
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), rows)
