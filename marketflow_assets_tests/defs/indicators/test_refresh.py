"""``marketflow refresh`` end to end: real Parquet -> Dagster -> local Spark -> real Postgres."""

from __future__ import annotations

import argparse
import dataclasses
import math
from datetime import UTC, datetime

import psycopg2
import pytest

from marketflow_assets.defs.indicators import refresh
from marketflow_assets.settings import ConfigError, load_settings
from marketflow_assets_tests.helpers import (
    irregular_rows,
    read_table,
    reference_indicators,
    reference_movers,
    write_raw_parquet,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    refresh.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def refresh_settings(pg_clean, data_dir, spark, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return dataclasses.replace(load_settings({}), postgres_url=pg_clean, data_dir=data_dir)


def table_snapshot(url: str) -> dict:
    """Every row of both tables, plus the physical row versions (xmin) to see rewrites."""
    out = {}
    for table in ("price_indicators", "market_movers"):
        frame = read_table(url, table)
        out[table] = sorted(tuple(str(v) for v in row) for row in frame.itertuples(index=False))
        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT xmin::text, ctid::text FROM {table}")
                out[table + " versions"] = sorted(cur.fetchall())
        finally:
            conn.close()
    return out


def test_refresh_all_raw_data_matches_reference_and_second_run_changes_nothing(
    refresh_settings, capsys
):
    rows = irregular_rows(seed=3, coins=7, polls=60)
    write_raw_parquet(refresh_settings.raw_dir, rows)
    assert refresh.run(parse(), refresh_settings) == 0
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert len(progress) >= 3 and progress[-1].startswith(f"[{len(progress)}/{len(progress)}]")

    url = refresh_settings.postgres_url
    ref = reference_indicators(rows)
    table = read_table(url, "price_indicators")
    assert len(table) == len(ref)
    for row in table.itertuples(index=False):
        exp = ref[(row.coin_id, row.ts.to_pydatetime())]
        for col in ("change_1min", "change_5min", "sma_5min", "ema_3min", "volatility_5min"):
            value, expected = getattr(row, col), exp[col]
            if expected is None:
                assert math.isnan(value)
            else:
                assert math.isclose(value, expected, rel_tol=1e-9, abs_tol=0)
    movers = sorted(
        (r.snapshot_ts.to_pydatetime(), r.direction, r.rank, r.coin_id)
        for r in read_table(url, "market_movers").itertuples(index=False)
    )
    assert movers == [m[:4] for m in reference_movers(ref)]

    before = table_snapshot(url)
    assert refresh.run(parse(), refresh_settings) == 0
    assert table_snapshot(url) == before


def test_refresh_start_end_limits_partitions(refresh_settings, capsys):
    # the code location's partitions start later than this data: refresh extends them itself
    refresh_settings = dataclasses.replace(
        refresh_settings, partition_start=datetime(2024, 3, 10, tzinfo=UTC)
    )
    rows = irregular_rows(seed=3, coins=4, polls=60)
    write_raw_parquet(refresh_settings.raw_dir, rows)
    code = refresh.run(
        parse("--start", "2024-03-09T23:10:00Z", "--end", "2024-03-10T00:00:00+00:00"),
        refresh_settings,
    )
    assert code == 0
    assert "[1/1] 2024-03-09-23:00" in capsys.readouterr().out
    table = read_table(refresh_settings.postgres_url, "price_indicators")
    assert len(table) and table["ts"].dt.hour.eq(23).all()


def test_refresh_without_raw_data_does_nothing(refresh_settings, capsys):
    assert refresh.run(parse(), refresh_settings) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_refresh_rejects_bad_arguments(refresh_settings):
    with pytest.raises(ConfigError, match="--start"):
        refresh.run(parse("--start", "yesterday"), refresh_settings)
    with pytest.raises(ConfigError, match="not before"):
        refresh.run(parse("--start", "2024-01-02", "--end", "2024-01-01"), refresh_settings)
    with pytest.raises(ConfigError, match="MARKETFLOW_POSTGRES_URL"):
        refresh.run(parse(), dataclasses.replace(refresh_settings, postgres_url=None))
