"""Helpers for the check tests: raw Parquet written with the schema of ``schema.py`` and rows in
the real PostgreSQL tables, computed with the pipeline's own indicator math."""

import re
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import psycopg2
import psycopg2.extras

from marketflow_assets.definitions import ASSET_CHECKS
from marketflow_assets.indicators import compute_indicators, compute_movers
from marketflow_assets.schema import RAW_COLUMN_NAMES, column_names

POLL = timedelta(seconds=30)


def make_raw(
    end: datetime, polls: int = 24, coins: int = 8, seed: int = 7, interval: timedelta = POLL
) -> pd.DataFrame:
    """``polls`` snapshots of ``coins`` coins (random walks), the last one at ``end``."""
    rng = np.random.default_rng(seed)
    rows = []
    prices = rng.uniform(0.5, 50_000, size=coins)
    for i in range(polls):
        ts = end - (polls - 1 - i) * interval
        prices = prices * np.exp(rng.normal(0, 0.004, size=coins))
        for c in range(coins):
            rows.append(
                {
                    "id": f"coin-{c:02d}",
                    "symbol": f"c{c:02d}",
                    "name": f"Coin {c}",
                    "current_price": float(prices[c]),
                    "market_cap": float(prices[c]) * 1e6,
                    "market_cap_rank": c + 1,
                    "total_volume": 1e5,
                    "high_24h": float(prices[c]) * 1.05,
                    "low_24h": float(prices[c]) * 0.95,
                    "price_change_percentage_24h": 0.5,
                    "circulating_supply": 1e6,
                    "last_updated": ts - timedelta(seconds=5),
                    "ts": ts,
                }
            )
    df = pd.DataFrame(rows)
    for col in ("ts", "last_updated"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df


def _micros(ts: pd.Timestamp) -> int:
    return int(ts.value // 1000)


def write_raw(data_dir: Path, df: pd.DataFrame, streaming_names: bool = True) -> list[Path]:
    """Append ``df`` to the ``raw_prices`` Delta table like the Spark job does: one commit per
    poll (micro-batch); return the data files added. (``streaming_names``: kept for old call
    sites; file names are the table's.)"""
    from marketflow_assets.raw_dataset import append_frame, snapshot

    raw_dir = data_dir / "raw_prices"
    before = {f.path for f in snapshot(raw_dir).files_all}
    for _ts, poll in df.groupby("ts"):
        append_frame(raw_dir, poll[list(RAW_COLUMN_NAMES)], operation="stream")
    return sorted(f.path for f in snapshot(raw_dir).files_all if f.path not in before)


def _bare_type(kind: str) -> str:
    return re.split(r"\s+(?:NOT NULL|CHECK)\b", kind)[0]


def create_tables(url: str, relaxed: bool = False) -> None:
    """The real tables (``create_all_sql``), or — ``relaxed`` — the same columns without any
    constraint, as a table created by hand would be (to craft NULLs and duplicates)."""
    from marketflow_assets.schema import TABLES, create_all_sql

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        if relaxed:
            for table, (columns, _) in TABLES.items():
                body = ", ".join(f"{name} {_bare_type(kind)}" for name, kind in columns)
                cur.execute(f"CREATE TABLE {table} ({body})")
        else:
            for statement in create_all_sql():
                cur.execute(statement)
    conn.close()


def insert(url: str, table: str, df: pd.DataFrame) -> None:
    cols = column_names(table)
    records = [
        tuple(None if (isinstance(v, float) and np.isnan(v)) else v for v in row)
        for row in df[list(cols)].itertuples(index=False, name=None)
    ]
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur, f"INSERT INTO {table} ({', '.join(cols)}) VALUES %s", records
        )
    conn.close()


def execute(url: str, sql: str, params=None) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
    conn.close()


def good_tables(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """price_indicators and market_movers rows computed by the pipeline's own functions."""
    indicators = compute_indicators(raw)
    return indicators, compute_movers(indicators)


def load_good_tables(url: str, raw: pd.DataFrame, relaxed: bool = False):
    indicators, movers = good_tables(raw)
    create_tables(url, relaxed=relaxed)
    insert(url, "price_indicators", indicators)
    insert(url, "market_movers", movers)
    return indicators, movers


STUB_ASSETS = [
    dg.AssetSpec("raw_prices"),
    dg.AssetSpec("price_indicators", deps=["raw_prices"]),
    dg.AssetSpec("market_movers", deps=["price_indicators"]),
]


def checks_defs(resources: dict, assets=None) -> dg.Definitions:
    """The checks with the jobs and sensors that use them (as ``definitions.py`` assembles them),
    over ``assets`` (default :data:`STUB_ASSETS`) and the given test resources."""
    from marketflow_assets.defs.monitoring.alerts import marketflow_alert_sensor
    from marketflow_assets.defs.monitoring.jobs import all_checks_job, monitoring_checks_job
    from marketflow_assets.defs.monitoring.sensors import monitoring_checks_sensor

    return dg.Definitions(
        assets=STUB_ASSETS if assets is None else assets,
        asset_checks=ASSET_CHECKS,
        jobs=[monitoring_checks_job, all_checks_job],
        sensors=[monitoring_checks_sensor, marketflow_alert_sensor],
        resources=resources,
    )


def run_checks(
    resources: dict, selection: dg.AssetSelection, instance: dg.DagsterInstance | None = None
) -> dict[str, dg.AssetCheckEvaluation]:
    """Execute the selected checks in a real in-process Dagster run; evaluations by
    ``asset:check`` name."""
    result = dg.materialize(
        [*STUB_ASSETS, *ASSET_CHECKS],
        selection=selection,
        resources=resources,
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    return {e.asset_check_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
