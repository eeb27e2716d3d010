"""Session-wide real infrastructure for the tests: a Tansu broker, PostgreSQL 16, local Spark.

Everything goes through :mod:`marketflow_assets.runtime.services`, the same code `marketflow up`
uses.
Set ``MARKETFLOW_KAFKA_BOOTSTRAP`` / ``MARKETFLOW_POSTGRES_URL`` to run the suite against real
servers instead of the embedded ones.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
import warnings
from pathlib import Path

import pytest

from marketflow_assets.runtime.services import EmbeddedKafka, EmbeddedPostgres, wait_for_kafka
from marketflow_assets.schema import STATE_TABLES, TABLES
from marketflow_assets.settings import load_settings

# The test data lies in the past (2024, 2026-03): the code location's partitions must start
# before it. Without this variable they start at the first hour of ./data/raw_prices (else today);
# test_defs.py tests that default in an empty folder.
os.environ.setdefault("MARKETFLOW_PARTITION_START", "2020-01-01")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """Bootstrap servers of a real Kafka-protocol broker (embedded Tansu unless configured)."""
    external = os.environ.get("MARKETFLOW_KAFKA_BOOTSTRAP")
    if external:
        wait_for_kafka(external, timeout=15)
        yield external
        return
    with EmbeddedKafka(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> str:
    """URL of a real PostgreSQL (embedded pgserver PostgreSQL 16 unless configured)."""
    external = os.environ.get("MARKETFLOW_POSTGRES_URL")
    if external:
        yield external
        return
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata") as url:
        yield url


@pytest.fixture
def pg_clean(postgres_url) -> str:
    """``postgres_url`` with the Marketflow tables dropped, so each test starts empty."""
    import psycopg2

    conn = psycopg2.connect(postgres_url)
    try:
        with conn, conn.cursor() as cur:
            for table in (*TABLES, *STATE_TABLES):
                cur.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    finally:
        conn.close()
    return postgres_url


@pytest.fixture
def new_topic(kafka_bootstrap):
    """Factory creating a fresh, uniquely named topic: ``new_topic(prefix, partitions) -> name``."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="marketflow-tests")

    def create(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        return name

    yield create
    admin.close()


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for the whole test session."""
    from marketflow_assets.runtime.spark import get_spark

    session = get_spark("local[2]", app_name="marketflow-tests")
    yield session
    session.stop()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings(data_dir, kafka_bootstrap, postgres_url, new_topic):
    """Settings pointing at the test broker (a fresh topic), Postgres and a fresh data dir."""
    base = load_settings({})
    return dataclasses.replace(
        base,
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=new_topic("crypto_prices"),
        postgres_url=postgres_url,
        data_dir=data_dir,
    )


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository (recorded real data); skips when absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent (recorded CoinGecko responses live there)")
    return SHARED_DIR
