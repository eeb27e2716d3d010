"""``marketflow refresh`` on a Spark standalone cluster into a password-protected PostgreSQL 15
over TCP, then the data checks against that server; the password appears in no output, no log,
no file the run leaves behind and no process's command line.

Configured only through the environment, as a user would: ``MARKETFLOW_SPARK_MASTER`` (the
cluster), ``MARKETFLOW_LOCAL_MAX_ROWS=0`` (every partition computed on Spark),
``MARKETFLOW_POSTGRES_URL`` (``postgresql://marketflow:<password>@127.0.0.1:<port>/marketflow``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from marketflow_assets_tests.engines.watch import ProcessWatch
from marketflow_assets_tests.helpers import (
    assert_indicators_match_reference,
    assert_movers_match_reference,
    irregular_rows,
    read_table,
    write_raw_parquet,
)

pytestmark = [
    pytest.mark.engines,
    pytest.mark.spark_cluster,
    pytest.mark.postgres_tcp,
    pytest.mark.timeout(900),
]

MARKETFLOW = Path(sys.executable).parent / "marketflow"


def recent_rows(seed: int, coins: int, polls: int) -> list[tuple]:
    """``irregular_rows`` moved so that the newest observation is 30 s old."""
    rows = irregular_rows(seed=seed, coins=coins, polls=polls)
    shift = datetime.now(UTC) - timedelta(seconds=30) - max(r[2] for r in rows)
    shift = timedelta(seconds=round(shift.total_seconds()))
    return [(coin, symbol, ts + shift, price) for coin, symbol, ts, price in rows]


def files_containing(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``secret`` (SQLite, logs, Parquet...)."""
    needle = secret.encode()
    hits = []
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


def test_refresh_on_spark_cluster_into_password_postgres_matches_reference_and_hides_password(
    spark_cluster,
    password_postgres,
    password_pg_clean,
    data_dir,
    job_cwd,
    tmp_path,
    monkeypatch,
    capfd,
):
    secret = password_postgres.password
    url = password_pg_clean
    rows = recent_rows(seed=11, coins=6, polls=45)
    write_raw_parquet(data_dir / "raw_prices", rows)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETFLOW_", "DAGSTER_"))}
    env.update(
        MARKETFLOW_SPARK_MASTER=spark_cluster.master_url,
        MARKETFLOW_LOCAL_MAX_ROWS="0",
        MARKETFLOW_POSTGRES_URL=url,
        MARKETFLOW_DATA_DIR=str(data_dir),
        DAGSTER_HOME=str(dagster_home),
        PYSPARK_PYTHON=sys.executable,
    )

    apps_before = spark_cluster.master_log.read_text().count("Registering app")
    with ProcessWatch(secret) as watch:
        proc = subprocess.Popen(
            [str(MARKETFLOW), "refresh"],
            env=env,
            cwd=job_cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watch.root = proc.pid
        try:
            stdout, stderr = proc.communicate(timeout=480)
        finally:
            if proc.poll() is None:
                proc.kill()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    progress = [line for line in res.stdout.splitlines() if line.startswith("[")]
    assert progress and all("spark)" in line for line in progress), res.stdout
    assert "marketflow:***@127.0.0.1" in res.stdout  # the target is named, redacted

    # the rows equal the independent reference, computed on the cluster's executors
    assert_indicators_match_reference(read_table(url, "price_indicators"), rows)
    assert_movers_match_reference(read_table(url, "market_movers"), rows)
    # ... in an application of the cluster (the streaming test may have run others before)
    apps_after = spark_cluster.master_log.read_text().count("Registering app")
    assert apps_after == apps_before + 1

    # the checks, against the same server (as the code location runs them)
    monkeypatch.setenv("MARKETFLOW_POSTGRES_URL", url)
    monkeypatch.setenv("MARKETFLOW_DATA_DIR", str(data_dir))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_WARN_SECONDS", "3600")  # the refresh took a while
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_ERROR_SECONDS", "7200")
    from marketflow_assets.definitions import defs

    capfd.readouterr()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("all_checks_job").execute_in_process(
            instance=instance, raise_on_error=False
        )
    evaluations = {
        e.asset_check_key.to_user_string(): e for e in result.get_asset_check_evaluations()
    }
    must_pass = {
        "raw_prices:freshness_check",
        "price_indicators:freshness_check",
        "market_movers:freshness_check",
        "price_indicators:prices_positive",
        "price_indicators:unique_coin_ts",
    }
    assert must_pass <= set(evaluations), sorted(evaluations)
    assert {k for k in must_pass if not evaluations[k].passed} == set()

    # the password: not in any output, log, file left behind, nor any process's argv
    checks_output = capfd.readouterr()
    assert secret not in res.stdout + res.stderr + checks_output.out + checks_output.err
    assert watch.scans > 0 and watch.argv_hits == [], watch.argv_hits
    # the Spark driver (client of a loopback cluster) listens on loopback only, no web UI
    assert any(" java" in where for where in watch.listening), watch.listening
    assert watch.exposed == set()
    for root in (data_dir, dagster_home, job_cwd, spark_cluster.work_dir):
        assert files_containing(root, secret) == [], root
    assert secret not in password_postgres.log_path.read_text(errors="replace")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM price_indicators")
        assert cur.fetchone()[0] == len(rows)
