"""The PostgreSQL-backed Dagster instance used by ``marketflow up``.

``deploy/dagster_postgres.yaml`` keeps runs, the event log and schedule/sensor state in the
Marketflow PostgreSQL (``MARKETFLOW_POSTGRES_URL``, which ``marketflow up`` always exports) through
:class:`MarketflowPostgresStorage`; ``dagster.yaml`` in the repository root holds the same run
settings on Dagster's SQLite default for a plain ``dagster dev``.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from marketflow_assets.settings import ConfigError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_INSTANCE_YAML = REPO_ROOT / "deploy" / "dagster_postgres.yaml"
SQLITE_INSTANCE_YAML = REPO_ROOT / "dagster.yaml"


def dagster_storage_url(postgres_url: str) -> str:
    """``postgres_url`` with an explicit psycopg2 driver, as dagster-postgres (SQLAlchemy) needs.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed; the
    Marketflow URL itself stays a plain libpq URL for psycopg2 and Spark.
    """
    parts = urlsplit(postgres_url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
        raise ConfigError(
            "MARKETFLOW_POSTGRES_URL must look like postgresql://user:pass@host:port/db"
        )
    return urlunsplit(parts._replace(scheme="postgresql+psycopg2"))


@functools.cache
def _storage_class() -> type:
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    class MarketflowPostgresStorage(DagsterPostgresStorage):
        """dagster-postgres storage that accepts the plain ``postgresql://`` Marketflow URL.

        Configured in ``deploy/dagster_postgres.yaml`` as ``storage: custom:`` with the same
        ``postgres_url`` / ``postgres_db`` config as ``storage: postgres:``.
        """

        @classmethod
        def from_config_value(cls, inst_data, config_value):
            return cls(
                inst_data=inst_data,
                postgres_url=dagster_storage_url(pg_url_from_config(config_value)),
                should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            )

    MarketflowPostgresStorage.__module__ = __name__
    MarketflowPostgresStorage.__qualname__ = "MarketflowPostgresStorage"
    return MarketflowPostgresStorage


def __getattr__(name: str):
    # The storage class is defined on first use (Dagster looks it up by name): importing this
    # module -- ``marketflow up`` does, for prepare_dagster_home -- loads no Dagster (~90 MB).
    if name == "MarketflowPostgresStorage":
        return _storage_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prepare_dagster_home(home: Path, postgres: bool = True) -> dict[str, str]:
    """Write ``home/dagster.yaml`` (PostgreSQL storage from ``MARKETFLOW_POSTGRES_URL``, or the
    SQLite default) and return the environment ``dagster dev`` needs besides
    ``MARKETFLOW_POSTGRES_URL``."""
    home.mkdir(parents=True, exist_ok=True)
    source = POSTGRES_INSTANCE_YAML if postgres else SQLITE_INSTANCE_YAML
    shutil.copyfile(source, home / "dagster.yaml")
    return {"DAGSTER_HOME": str(home)}


#: The event types Dagster's run-retry daemon (its event-log consumer) keeps a cursor for, and
#: the key of each cursor in the instance's daemon cursor storage (as dagster 1.13 names them in
#: ``dagster._daemon.auto_run_reexecution.event_log_consumer``; a test checks they still agree).
RUN_RETRY_CURSOR_EVENTS = ("RUN_FAILURE", "RUN_SUCCESS")


def run_retry_cursor_keys() -> set[str]:
    from dagster import DagsterEventType

    return {
        f"EVENT_LOG_CONSUMER_CURSOR-{DagsterEventType[name].value}"
        for name in RUN_RETRY_CURSOR_EVENTS
    }


def seed_daemon_cursors(postgres_url: str) -> dict[str, str]:
    """Give Dagster's run-retry daemon (the event-log consumer) its starting point before its
    first start, where it would put it itself: after the newest event, so older runs are never
    retried. The daemon logs "No cursor for event type ..., ignoring older events" as a WARNING
    whenever it has to choose that itself, i.e. on every fresh instance. Cursors already stored
    are kept. Returns the cursors set (none when all were there)."""
    from dagster_postgres import DagsterPostgresStorage

    storage = DagsterPostgresStorage(postgres_url=dagster_storage_url(postgres_url))
    try:
        keys = run_retry_cursor_keys()
        missing = keys - set(storage.run_storage.get_cursor_values(keys))
        if not missing:
            return {}
        newest = str(storage.event_log_storage.get_maximum_record_id() or 0)
        cursors = dict.fromkeys(sorted(missing), newest)
        storage.run_storage.set_cursor_values(cursors)
        return cursors
    finally:
        storage.event_log_storage.dispose()


def seed_in_child(env: dict[str, str], timeout_s: float = 120.0) -> None:
    """:func:`seed_daemon_cursors` in a short child process on ``env``'s
    ``MARKETFLOW_POSTGRES_URL`` (never on its command line): the caller -- ``marketflow up``,
    which lives as long as the stack -- never loads Dagster. Only spares a warning: a failure is
    logged, never raised."""
    import subprocess

    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("could not seed the run-retry daemon's cursors: %s", exc)
        return
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        logger.debug("could not seed the run-retry daemon's cursors: %s", tail)


if __name__ == "__main__":  # seed_in_child
    from marketflow_assets.settings import load_settings

    seed_daemon_cursors(load_settings().postgres_url)
