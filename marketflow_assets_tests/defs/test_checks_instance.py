"""The Dagster instance configurations: PostgreSQL-backed (``marketflow up``) and SQLite default."""

import contextlib
import uuid
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import psycopg2
import pytest
import yaml

from marketflow_assets.definitions import ASSET_CHECKS
from marketflow_assets.defs.indicators import checks as price_indicator_checks
from marketflow_assets.instance import (
    POSTGRES_INSTANCE_YAML,
    SQLITE_INSTANCE_YAML,
    dagster_storage_url,
    prepare_dagster_home,
    seed_daemon_cursors,
)
from marketflow_assets_tests.defs.checks_data import STUB_ASSETS, load_good_tables, make_raw


@pytest.fixture
def dagster_db(postgres_url):
    """A fresh database on the test server for Dagster's own tables."""
    name = f"dagster_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(postgres_url)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def test_postgres_instance_records_runs(
    tmp_path, dagster_db, resources, pg_clean, now, monkeypatch
):
    env = prepare_dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.setenv("MARKETFLOW_POSTGRES_URL", dagster_db)  # plain postgresql:// as `up` sets
    load_good_tables(pg_clean, make_raw(now))

    with dg.DagsterInstance.get() as instance:
        assert type(instance.get_ref().storage).__name__ == "MarketflowPostgresStorage"
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        result = dg.materialize(
            [*STUB_ASSETS, *ASSET_CHECKS],
            selection=dg.AssetSelection.checks(*price_indicator_checks.CHECKS),
            resources=resources,
            instance=instance,
        )
        assert result.success
        run_id = result.run_id

    # a new instance (another process after a restart) sees the run and its check results
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        key = dg.AssetCheckKey(dg.AssetKey("price_indicators"), "prices_positive")
        record = instance.get_latest_asset_check_evaluation_record(key)
        assert record.run_id == run_id and record.evaluation.passed

    with psycopg2.connect(dagster_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, status FROM runs")
        assert cur.fetchall() == [(run_id, "SUCCESS")]
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s"
            " AND dagster_event_type = 'ASSET_CHECK_EVALUATION'",
            (run_id,),
        )
        assert cur.fetchone()[0] == len(price_indicator_checks.CHECKS)
    conn.close()


def test_the_run_retry_daemon_starts_quietly_after_the_newest_event(
    tmp_path, dagster_db, monkeypatch, caplog
):
    """Issue 28 (quiet logs): the run-retry daemon's first start on a fresh instance warned "No
    cursor for event type ..., ignoring older events"; `up` now gives it the cursor it would
    choose itself (after the newest event) before it starts. Stored cursors are kept."""
    import logging

    from dagster._daemon.auto_run_reexecution.event_log_consumer import (
        DAGSTER_EVENT_TYPES,
        _create_cursor_key,
        _fetch_persisted_cursors,
    )

    from marketflow_assets.instance import run_retry_cursor_keys

    # our names of the daemon's cursors are Dagster's
    assert run_retry_cursor_keys() == {_create_cursor_key(t) for t in DAGSTER_EVENT_TYPES}
    env = prepare_dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.setenv("MARKETFLOW_POSTGRES_URL", dagster_db)

    @dg.asset
    def one():
        return 1

    daemon_log = logging.getLogger("test.event_log_consumer")
    with dg.DagsterInstance.get() as instance:
        assert dg.materialize([one], instance=instance).success  # events before the daemon
        with caplog.at_level(logging.WARNING, logger=daemon_log.name):
            _fetch_persisted_cursors(instance, DAGSTER_EVENT_TYPES, daemon_log)
        assert "No cursor for event type" in caplog.text  # what a fresh instance said
        caplog.clear()
        newest = instance.event_log_storage.get_maximum_record_id()
        seeded = seed_daemon_cursors(dagster_db)
        assert len(seeded) == len(DAGSTER_EVENT_TYPES) and set(seeded.values()) == {str(newest)}
        with caplog.at_level(logging.WARNING, logger=daemon_log.name):
            cursors = _fetch_persisted_cursors(instance, DAGSTER_EVENT_TYPES, daemon_log)
        assert caplog.text == ""
        assert set(cursors.values()) == {newest}  # older runs are not retried
        first = DAGSTER_EVENT_TYPES[0]
        instance.daemon_cursor_storage.set_cursor_values({_create_cursor_key(first): "1"})
        assert seed_daemon_cursors(dagster_db) == {}  # stored cursors are kept
        assert _fetch_persisted_cursors(instance, DAGSTER_EVENT_TYPES, daemon_log)[first] == 1


def test_up_prepares_postgres_and_seeds_the_cursors_without_loading_dagster(tmp_path, dagster_db):
    """``marketflow up`` lives as long as the stack: its table creation, Dagster home, cursor
    seeding (a short child) and the raw table readiness probe load neither Dagster nor pandas."""
    import os
    import subprocess
    import sys
    from datetime import UTC, datetime

    from dagster_postgres import DagsterPostgresStorage

    from marketflow_assets.instance import run_retry_cursor_keys
    from marketflow_assets.raw_dataset import append_frame

    raw = tmp_path / "raw_prices"
    append_frame(raw, make_raw(datetime.now(UTC), polls=2, coins=2))
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from marketflow_assets import instance, raw_dataset\n"
        "from marketflow_assets.runtime import up\n"
        "url = os.environ['MARKETFLOW_POSTGRES_URL']\n"
        "up.create_marketflow_tables(url)\n"
        "env = {**os.environ, **instance.prepare_dagster_home(Path(sys.argv[1]))}\n"
        "instance.seed_in_child(env)\n"
        "print(*(raw_dataset.has_files(Path(p)) for p in sys.argv[2:]))\n"
        "heavy = ('dagster', 'pandas', 'pyarrow', 'pyspark')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "home"), str(raw), str(tmp_path / "none")],
        env={**os.environ, "MARKETFLOW_POSTGRES_URL": dagster_db},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True False", "[]"]
    with psycopg2.connect(dagster_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM price_indicators")  # the Marketflow tables exist
    storage = DagsterPostgresStorage(postgres_url=dagster_storage_url(dagster_db))
    try:
        stored = storage.run_storage.get_cursor_values(run_retry_cursor_keys())
    finally:
        storage.event_log_storage.dispose()
    assert set(stored) == run_retry_cursor_keys()


def test_postgres_config_needs_its_env_var(tmp_path, monkeypatch):
    prepare_dagster_home(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MARKETFLOW_POSTGRES_URL", raising=False)
    with pytest.raises(Exception, match="MARKETFLOW_POSTGRES_URL"):
        dg.DagsterInstance.get()


def test_sqlite_default_without_postgres(tmp_path, monkeypatch):
    env = prepare_dagster_home(tmp_path / "home", postgres=False)
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.delenv("MARKETFLOW_POSTGRES_URL", raising=False)
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert instance.run_retries_enabled


def test_both_configs_share_run_settings():
    postgres = yaml.safe_load(POSTGRES_INSTANCE_YAML.read_text())
    sqlite = yaml.safe_load(SQLITE_INSTANCE_YAML.read_text())
    assert postgres.pop("storage") == {
        "custom": {
            "module": "marketflow_assets.instance",
            "class": "MarketflowPostgresStorage",
            "config": {"postgres_url": {"env": "MARKETFLOW_POSTGRES_URL"}},
        }
    }
    assert "storage" not in sqlite
    assert postgres == sqlite


def test_storage_url_has_explicit_driver():
    assert (
        dagster_storage_url("postgresql://postgres:@/postgres?host=/tmp/pg")
        == "postgresql+psycopg2://postgres:@/postgres?host=/tmp/pg"
    )
    assert dagster_storage_url("postgres://u:p@h:5/db") == "postgresql+psycopg2://u:p@h:5/db"


def test_the_follower_keeps_its_postgres_connections_and_replaces_a_dropped_one(
    tmp_path, dagster_db, monkeypatch
):
    """dagster-postgres opens a connection per query; ``hold_connections`` (what ``marketflow
    follow`` does) keeps one open; a connection PostgreSQL terminated fails one query, and the
    next one reconnects."""
    import sqlalchemy

    from marketflow_assets.defs.indicators.follow import hold_connections

    env = prepare_dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.setenv("MARKETFLOW_POSTGRES_URL", dagster_db)
    opened: list[int] = []

    def count(*_args) -> None:
        opened.append(1)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", count)
    try:
        with dg.DagsterInstance.get() as instance:
            instance.get_runs()
            opened.clear()
            for _ in range(4):
                instance.get_runs()
            assert len(opened) == 4  # Dagster's default: a new connection for every query

            hold_connections(instance)
            instance.get_runs()
            opened.clear()
            for _ in range(4):
                instance.get_runs()
            assert opened == []

            with psycopg2.connect(dagster_db) as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            conn.close()
            with contextlib.suppress(Exception):
                instance.get_runs()  # may find the dropped connection
            assert instance.get_runs() == []
            assert len(opened) == 1  # one new connection, kept again
            instance.get_runs()
            assert len(opened) == 1
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", count)
