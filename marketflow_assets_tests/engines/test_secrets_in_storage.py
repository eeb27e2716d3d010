"""No PostgreSQL password in Dagster's storage (issue #20, part 6).

``marketflow refresh`` (its in-process path, ``refresh.run``) against the password-protected
PostgreSQL 15 over TCP, with runs recorded on a Dagster instance in a temporary
``DAGSTER_HOME``; then every file under ``DAGSTER_HOME`` is searched for the password: as raw
bytes and, in SQLite databases, every text or blob value, zlib-decompressed where it is
compressed (Dagster stores job snapshots compressed, so a plain byte search would miss them).
The search itself is shown to find a password that a literal resource URL puts there.
"""

from __future__ import annotations

import argparse
import dataclasses
import sqlite3
import zlib
from pathlib import Path

import dagster as dg
import pytest

from marketflow_assets.defs.indicators import refresh
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.settings import load_settings
from marketflow_assets_tests.helpers import irregular_rows, read_table, write_raw_parquet

pytestmark = [pytest.mark.engines, pytest.mark.postgres_tcp, pytest.mark.timeout(600)]


def _values_containing(db: Path, needle: bytes) -> list[str]:
    """``table.column`` of every SQLite value holding ``needle`` (zlib bodies decompressed)."""
    hits = []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            cur = con.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cur.description]
            for row in cur:
                for name, value in zip(names, row, strict=True):
                    if isinstance(value, str):
                        value = value.encode()
                    if not isinstance(value, bytes):
                        continue
                    try:
                        value = zlib.decompress(value)
                    except zlib.error:
                        pass
                    if needle in value:
                        hits.append(f"{db.name}:{table}.{name}")
    finally:
        con.close()
    return hits


def secret_locations(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    hits = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if needle in data:
            hits.append(str(path))
        if data.startswith(b"SQLite format 3\x00"):
            hits += _values_containing(path, needle)
    return hits


def test_the_search_finds_a_password_in_a_compressed_job_snapshot(tmp_path, monkeypatch):
    secret = "Pa55-" + tmp_path.name

    @dg.asset
    def uses_postgres(postgres: PostgresResource) -> None:
        assert postgres.url

    home = tmp_path / "home"
    home.mkdir()
    url = f"postgresql://marketflow:{secret}@127.0.0.1:1/marketflow"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert dg.materialize(
            [uses_postgres], resources={"postgres": PostgresResource(url=url)}, instance=instance
        ).success
    hits = secret_locations(home, secret)
    assert any(hit.endswith("runs.db:snapshots.snapshot_body") for hit in hits), hits
    assert not any(hit.endswith("runs.db") for hit in hits)  # compressed: bytes alone miss it


def test_refresh_leaves_no_password_under_dagster_home(
    password_postgres, password_pg_clean, data_dir, spark, tmp_path, monkeypatch, capsys
):
    secret = password_postgres.password
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    rows = irregular_rows(seed=5, coins=4, polls=40)
    write_raw_parquet(data_dir / "raw_prices", rows)
    settings = dataclasses.replace(
        load_settings({}),
        postgres_url=password_pg_clean,
        data_dir=data_dir,
        dagster_home=str(home),
    )
    parser = argparse.ArgumentParser()
    refresh.add_arguments(parser)
    assert refresh.run(parser.parse_args([]), settings) == 0
    out = capsys.readouterr()
    assert "marketflow:***@127.0.0.1" in out.out and secret not in out.out + out.err
    assert len(read_table(password_pg_clean, "price_indicators")) == len(rows)

    with dg.DagsterInstance.get() as instance:  # the runs are recorded there
        runs = instance.get_runs()
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert instance.get_job_snapshot(runs[0].job_snapshot_id) is not None
    assert (home / "history" / "runs.db").is_file()
    assert secret_locations(home, secret) == []
