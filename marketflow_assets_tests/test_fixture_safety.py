"""The test fixtures never touch a database they did not create (issue #20, part 5).

A developer's ``.env`` (or shell) pointing ``MARKETFLOW_POSTGRES_URL`` at their real database
must not lead ``pg_clean`` to drop its tables; a database lent with
``MARKETFLOW_TEST_POSTGRES_URL`` that holds tables is refused with exit code 3. Both are run as a
real pytest session in a subprocess (working directory with the ``.env``), against a second real
PostgreSQL (pgserver) holding the "developer's" tables. Loading the definitions with a ``.env``
in the working directory leaves ``os.environ`` unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg2
import pytest

from marketflow_assets.runtime.services import EmbeddedPostgres

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The fixture names of conftest.py, used by the inner session (loaded as a plugin).
INNER_TEST = """
import psycopg2

from marketflow_assets.settings import load_settings


def test_inner(pg_clean, settings):
    foreign = {foreign!r}
    assert pg_clean != foreign and settings.postgres_url == pg_clean
    assert settings.kafka_bootstrap != "127.0.0.1:9"
    assert load_settings().postgres_url is None  # .env and environment both ignored
    conn = psycopg2.connect(pg_clean)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE price_indicators (coin_id text)")
    conn.close()
"""


@pytest.fixture(scope="module")
def developer_db(tmp_path_factory):
    """A second real PostgreSQL standing in for the developer's: a project-named table with
    their data and a table of another application."""
    with EmbeddedPostgres(tmp_path_factory.mktemp("developer-pg") / "pgdata") as url:
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE price_indicators (coin_id text, note text)")
            cur.execute("INSERT INTO price_indicators VALUES ('bitcoin', 'real data')")
            cur.execute("CREATE TABLE customers (name text)")
            cur.execute("INSERT INTO customers VALUES ('alice')")
        conn.close()
        yield url


def _developer_rows(url: str) -> dict[str, list]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT coin_id, note FROM price_indicators")
            indicators = cur.fetchall()
            cur.execute("SELECT name FROM customers")
            return {"price_indicators": indicators, "customers": cur.fetchall()}
    finally:
        conn.close()


def _run_inner_session(tmp_path: Path, foreign_url: str, extra_env: dict[str, str]):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / ".env").write_text(
        f"MARKETFLOW_POSTGRES_URL={foreign_url}\nMARKETFLOW_KAFKA_BOOTSTRAP=127.0.0.1:9\n"
    )
    (cwd / "test_inner.py").write_text(INNER_TEST.format(foreign=foreign_url))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MARKETFLOW_DOTENV", "MARKETFLOW_TEST_POSTGRES_URL")
        and not k.startswith("PYTEST_")
    }
    env.update(PYTHONPATH=str(REPO_ROOT), MARKETFLOW_KAFKA_BOOTSTRAP="127.0.0.1:9", **extra_env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "marketflow_assets_tests.conftest",
            "--rootdir",
            str(cwd),
            # its own temp root: a session in pytest's default root chmods /tmp/pytest-of-<user>
            # to 0700, which locks the embedded PostgreSQL servers of this session (they run as
            # the `pgserver` user when tests run as root) out of their data directories
            "--basetemp",
            str(cwd / "inner-tmp"),
            "test_inner.py",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dotenv_database_is_never_touched(developer_db, tmp_path):
    before = _developer_rows(developer_db)
    # in the .env *and* in the shell: the fixtures must use neither
    res = _run_inner_session(tmp_path, developer_db, {"MARKETFLOW_POSTGRES_URL": developer_db})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout
    assert (
        _developer_rows(developer_db)
        == before
        == {
            "price_indicators": [("bitcoin", "real data")],
            "customers": [("alice",)],
        }
    )


def test_lent_database_with_foreign_tables_is_refused(developer_db, tmp_path):
    before = _developer_rows(developer_db)
    res = _run_inner_session(tmp_path, developer_db, {"MARKETFLOW_TEST_POSTGRES_URL": developer_db})
    assert res.returncode == 3, res.stdout + res.stderr
    output = res.stdout + res.stderr
    assert "refusing to run: MARKETFLOW_TEST_POSTGRES_URL=" in output
    assert "2 table(s) the tests did not create (customers, price_indicators)" in output
    assert "passed" not in res.stdout
    assert _developer_rows(developer_db) == before


def test_lent_empty_database_is_used_and_left_empty(tmp_path, tmp_path_factory):
    with EmbeddedPostgres(tmp_path_factory.mktemp("lent-pg") / "pgdata") as lent:
        res = _run_inner_session(
            tmp_path, "postgresql://nowhere:1/x", {"MARKETFLOW_TEST_POSTGRES_URL": lent}
        )
        assert res.returncode == 0, res.stdout + res.stderr
        conn = psycopg2.connect(lent)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            assert cur.fetchone()[0] == 0  # the session dropped what it created
        conn.close()


def test_importing_definitions_leaves_the_environment_alone(tmp_path):
    """A ``.env`` in the working directory is read as defaults, never copied into os.environ,
    and the native freshness policy does not depend on it."""
    (tmp_path / ".env").write_text(
        "MARKETFLOW_POSTGRES_URL=postgresql://dev:secret@127.0.0.1:1/dev\n"
        "MARKETFLOW_FRESHNESS_WARN_SECONDS=1000\n"
        "MARKETFLOW_FRESHNESS_ERROR_SECONDS=2000\n"
    )
    script = textwrap.dedent(
        """
        import json, os
        before = dict(os.environ)
        import dagster as dg
        from marketflow_assets.definitions import defs
        from marketflow_assets.settings import load_check_settings, load_settings
        graph = defs.get_repository_def().asset_graph
        policy = graph.get(dg.AssetKey("price_indicators")).freshness_policy
        print(json.dumps({
            "changed": sorted(k for k in set(before) | set(os.environ)
                              if before.get(k) != os.environ.get(k)),
            "warn": policy.warn_window.to_timedelta().total_seconds(),
            "fail": policy.fail_window.to_timedelta().total_seconds(),
            "dotenv_url": load_settings().postgres_url,
            "check_warn": load_check_settings().freshness_warn_seconds,
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETFLOW_")}
    env.update(PYTHONPATH=str(REPO_ROOT), MARKETFLOW_PARTITION_START="2020-01-01")
    res = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["changed"] == []
    assert (out["warn"], out["fail"]) == (120.0, 300.0)  # the defaults, not the .env's
    # the .env still configures the settings read at run time
    assert out["dotenv_url"] == "postgresql://dev:secret@127.0.0.1:1/dev"
    assert out["check_warn"] == 1000.0
