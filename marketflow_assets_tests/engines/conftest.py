"""Real engines beyond the embedded defaults: a Spark standalone cluster and a password-protected
PostgreSQL server over TCP, both on 127.0.0.1, one of each per test session.

* ``spark_cluster`` - :class:`marketflow_assets.runtime.spark_standalone.StandaloneCluster`: master
  + one
  worker from the pyspark wheel's ``spark-class`` (ephemeral ports, 2 cores, 2 GiB, 1 core per
  application); every JVM
  (daemons, executors, Python workers) is gone after the session (asserted).
* ``password_postgres`` - :class:`.pg_server.PasswordPostgres`: the system's PostgreSQL (Debian's
  ``/usr/lib/postgresql/15/bin``) with ``scram-sha-256`` auth on a free loopback port, run as
  ``nobody`` when the tests run as root.

Tests here carry the ``engines`` marker (``pytest -m engines`` / ``-m "not engines"``), plus
``spark_cluster`` or ``postgres_tcp``. Without the PostgreSQL binaries the Postgres tests skip with
the reason, unless ``MARKETFLOW_REQUIRE_ENGINES=1`` (set by ``.ci/run``): then they fail, so CI
can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from marketflow_assets_tests.engines.pg_server import PasswordPostgres, find_pg_bindir
from marketflow_assets_tests.helpers import unavailable


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A running Spark standalone cluster (master URL in ``.master_url``); stopped afterwards."""
    import shutil

    from marketflow_assets.runtime.spark_standalone import StandaloneCluster

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        unavailable("Java is not installed (Spark needs Java 17)")
    cluster = StandaloneCluster(tmp_path_factory.mktemp("spark-standalone"), cores=2, memory="2g")
    cluster.start()
    assert len(cluster.pids()) >= 2  # master and worker JVMs, seen by the leak check below
    try:
        yield cluster
    finally:
        cluster.stop()
    leftover = cluster.pids()
    assert not leftover, f"Spark processes left after stopping the cluster: {leftover}"


@pytest.fixture(scope="session")
def password_postgres():
    """A password-protected PostgreSQL over TCP on 127.0.0.1 (``.url``, ``.password``)."""
    bindir = find_pg_bindir()
    if bindir is None:
        unavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
            "(install Debian's postgresql-15, or set MARKETFLOW_TEST_PG_BINDIR)"
        )
    with PasswordPostgres(bindir) as server:
        yield server


@pytest.fixture
def password_pg_clean(password_postgres) -> str:
    """``password_postgres.url`` with the Marketflow tables dropped."""
    import psycopg2

    from marketflow_assets.schema import TABLES

    conn = psycopg2.connect(password_postgres.url)
    try:
        with conn, conn.cursor() as cur:
            for table in TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    finally:
        conn.close()
    return password_postgres.url


@pytest.fixture
def job_cwd(tmp_path) -> Path:
    """An empty working directory (no stray .env) for job and CLI subprocesses."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path
