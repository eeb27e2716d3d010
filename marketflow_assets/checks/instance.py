"""The PostgreSQL-backed Dagster instance used by ``marketflow up``.

``deploy/dagster_postgres.yaml`` keeps runs, the event log and schedule/sensor state in
PostgreSQL, reading the URL from ``MARKETFLOW_DAGSTER_PG_URL``; ``dagster.yaml`` in the repository
root holds the same run settings on Dagster's SQLite default for a plain ``dagster dev``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from marketflow_assets.settings import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTGRES_INSTANCE_YAML = REPO_ROOT / "deploy" / "dagster_postgres.yaml"
SQLITE_INSTANCE_YAML = REPO_ROOT / "dagster.yaml"
DAGSTER_PG_ENV = "MARKETFLOW_DAGSTER_PG_URL"


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


def prepare_dagster_home(home: Path, postgres_url: str | None) -> dict[str, str]:
    """Write ``home/dagster.yaml`` (PostgreSQL storage when ``postgres_url`` is given, else the
    SQLite default) and return the environment ``dagster dev`` needs."""
    home.mkdir(parents=True, exist_ok=True)
    source = POSTGRES_INSTANCE_YAML if postgres_url else SQLITE_INSTANCE_YAML
    shutil.copyfile(source, home / "dagster.yaml")
    env = {"DAGSTER_HOME": str(home)}
    if postgres_url:
        env[DAGSTER_PG_ENV] = dagster_storage_url(postgres_url)
    return env
