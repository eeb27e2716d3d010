"""Session-wide real infrastructure for the tests: a Tansu broker, PostgreSQL 16, local Spark.

Everything goes through :mod:`marketflow_assets.runtime.services`, the same code `marketflow up`
uses.

The tests only touch servers they started themselves: ``MARKETFLOW_POSTGRES_URL`` and
``MARKETFLOW_KAFKA_BOOTSTRAP`` are removed from the environment when the session starts and the
dotenv file is switched off (``MARKETFLOW_DOTENV=""``), so neither the developer's shell nor their
``.env`` can point a fixture that drops tables at real data. To lend the suite servers instead of
the embedded ones, set ``MARKETFLOW_TEST_POSTGRES_URL`` / ``MARKETFLOW_TEST_KAFKA_BOOTSTRAP``; the
PostgreSQL database must then hold no table when the session starts (else the session stops with
exit code 3 before any test runs), and the tables the session created are dropped at its end.
"""

from __future__ import annotations

import os

from marketflow_assets.settings import (
    ENV_DOTENV,
    ENV_POSTGRES_URL,
    ENV_TEST_POSTGRES_URL,
    lent_test_services,
    redact_url,
)

# Before anything loads settings: the developer's servers are not the tests' servers.
os.environ[ENV_DOTENV] = ""
for _name in [n for n in os.environ if n.startswith("MARKETFLOW_KAFKA_")] + [ENV_POSTGRES_URL]:
    os.environ.pop(_name, None)  # the broker address and its security settings, the database

import dataclasses  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from marketflow_assets.runtime.services import (  # noqa: E402
    EmbeddedKafka,
    EmbeddedPostgres,
    wait_for_kafka,
)
from marketflow_assets.schema import STATE_TABLES, TABLES  # noqa: E402
from marketflow_assets.settings import load_settings  # noqa: E402

#: Exit code of a session refused because the lent PostgreSQL database is not empty.
FOREIGN_TABLES_EXIT = 3

# The test data lies in the past (2024, 2026-03): the code location's partitions must start
# before it. Without this variable they start at the first hour of ./data/raw_prices (else today);
# test_defs.py tests that default in an empty folder.
os.environ.setdefault("MARKETFLOW_PARTITION_START", "2020-01-01")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


def public_tables(url: str) -> list[str]:
    """Tables (and views) in the ``public`` schema of the database at ``url``."""
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' ORDER BY table_name"
            )
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def pytest_sessionstart(session) -> None:
    """Refuse a lent PostgreSQL database that holds tables the tests did not create."""
    url, _ = lent_test_services()
    if not url:
        return
    try:
        found = public_tables(url)
    except Exception as exc:  # noqa: BLE001 - unreachable: say so in one line
        pytest.exit(
            f"{ENV_TEST_POSTGRES_URL}={redact_url(url)} unreachable: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
            returncode=FOREIGN_TABLES_EXIT,
        )
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        pytest.exit(
            f"refusing to run: {ENV_TEST_POSTGRES_URL}={redact_url(url)} holds {len(found)} "
            f"table(s) the tests did not create ({shown}); the tests drop tables, so point it at "
            "an empty database (or unset it to use an embedded PostgreSQL)",
            returncode=FOREIGN_TABLES_EXIT,
        )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """Bootstrap servers of a real Kafka-protocol broker (embedded Tansu unless
    ``MARKETFLOW_TEST_KAFKA_BOOTSTRAP`` lends one)."""
    _, external = lent_test_services()
    if external:
        wait_for_kafka(external, timeout=15)
        yield external
        return
    with EmbeddedKafka(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> str:
    """URL of a real PostgreSQL (embedded pgserver PostgreSQL 16 unless
    ``MARKETFLOW_TEST_POSTGRES_URL`` lends one: checked empty at session start, see
    :func:`pytest_sessionstart`; the tables the session created are dropped at its end)."""
    external, _ = lent_test_services()
    if external:
        try:
            yield external
        finally:
            _drop_public_tables(external)
        return
    # Not under pytest's temp root: any pytest session started meanwhile without --basetemp
    # (a developer's, beside this one) chmods /tmp/pytest-of-<user> to 0700, and the server
    # (run as the `pgserver` user when the tests run as root) loses its data directory.
    with tempfile.TemporaryDirectory(prefix="marketflow-test-pg-") as root:
        with EmbeddedPostgres(Path(root) / "pgdata") as url:
            yield url


def _drop_public_tables(url: str) -> None:
    """Drop the tables of ``public`` (the lent database was empty when the session started)."""
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            for (table,) in cur.fetchall():
                cur.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
    finally:
        conn.close()


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
    from marketflow_assets.spark_session import get_spark

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


# ------------------------------------------------------------------------------------------------
# Lanes: `make test` runs everything; `make test-fast` leaves out what carries the `slow` marker.
# ------------------------------------------------------------------------------------------------

#: Markers whose tests need an engine beyond the embedded Kafka/PostgreSQL or a whole stack.
SLOW_MARKERS = ("engines", "fault", "outage", "spark_cluster", "postgres_tcp", "stack", "browser")
#: Fixtures that start Spark (a JVM) for the test.
SLOW_FIXTURES = ("spark",)


def lane_of(item) -> str:
    """``slow`` when the test needs Spark, a running stack (`marketflow up`, the Spark job, the
    dashboard or Dagster as processes) or an engine beyond the embedded ones; else ``fast``."""
    if any(item.get_closest_marker(name) for name in SLOW_MARKERS):
        return "slow"
    if any(name in getattr(item, "fixturenames", ()) for name in SLOW_FIXTURES):
        return "slow"
    return "fast"


#: The longest tests (by marker, longest kinds first). ``make test`` runs three xdist workers
#: (``--dist load``), whose scheduler first hands each worker one run of consecutive tests (a
#: quarter of its share), then the rest a few at a time to whichever is free. The long tests are
#: dealt to the first runs of all workers but one, which starts on the short tests (three long
#: stacks at once overload 2 cores): the long ones overlap, none is left to finish alone.
FIRST = ("outage", "fault", "stack", "engines")


def _start_rank(item) -> int:
    for rank, name in enumerate(FIRST):
        if item.get_closest_marker(name):
            return rank
    return len(FIRST)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if lane_of(item) == "slow":
            item.add_marker(pytest.mark.slow)
    items.sort(key=_start_rank)  # stable: the file order within each rank
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # the same order in every worker (xdist checks the collections are equal)
        long = [item for item in items if _start_rank(item) < len(FIRST)]
        short = [item for item in items if _start_rank(item) == len(FIRST)]
        streams = max(1, workers - 1)
        first_run = max(2, len(items) // workers // 4)  # xdist's LoadScheduling first chunk
        order = []
        for k in range(workers):
            part = long[k::streams] if k < streams else []
            fill = max(0, first_run - len(part))
            order += part + short[:fill]
            short = short[fill:]
        items[:] = order + short
