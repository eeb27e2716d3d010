"""Small SQL helpers shared by the PostgreSQL-backed checks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marketflow_assets.schema import TABLES


def _table(table: str) -> str:
    if table not in TABLES:  # identifiers come from schema.py only, never from input
        raise ValueError(f"unknown table {table!r}")
    return table


def table_exists(conn, table: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (_table(table),))
        return bool(cur.fetchone()[0])


def newest_ts(conn, table: str, column: str) -> datetime | None:
    """``max(column)`` of ``table`` (timestamptz, UTC), or None when empty or missing."""
    if not table_exists(conn, table):
        return None
    if column not in {name for name, _ in TABLES[table][0]}:
        raise ValueError(f"unknown column {table}.{column}")
    with conn.cursor() as cur:
        cur.execute(f"SELECT max({column}) FROM {_table(table)}")
        newest = cur.fetchone()[0]
    if newest is not None and newest.tzinfo is None:  # a hand-made table with `timestamp`
        newest = newest.replace(tzinfo=UTC)
    return newest


def fetch_dicts(conn, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def fetch_one(conn, sql: str, params: dict[str, Any]) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def recomputed_since(instance, asset_key, run_id: str) -> tuple[bool, datetime | None]:
    """What ``run_id`` recomputed of ``asset_key``: ``(known, since)``.

    ``known`` is False when the newest materialization of the asset is not this run's (checks
    then look at the whole partition); otherwise ``since`` is the first recomputed instant, None
    when the run found nothing new (its checks then have no new rows to look at).
    """
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key), limit=1
    ).records
    if not records or records[0].run_id != run_id:
        return False, None
    metadata = records[0].asset_materialization.metadata
    if "incremental_plan" not in metadata:
        return False, None
    value = metadata.get("recomputed_from")
    if value is None:
        return True, None
    return True, datetime.fromtimestamp(float(value.value), tz=UTC)


def _recomputed_part(context, table: str, window):
    """In a partition run, only the rows this run recomputed (incremental refresh: a live run
    of the newest hour checks the new poll, not the whole hour again)."""
    if window is None:
        return None
    from dataclasses import replace

    import dagster as dg

    try:
        known, since = recomputed_since(context.instance, dg.AssetKey(table), context.run.run_id)
    except Exception:  # noqa: BLE001 - no instance/run (direct invocation): the whole window
        return window
    if not known or (since is not None and since <= window.start):
        return window  # nothing known, or the whole partition was recomputed
    start = window.end if since is None else since
    return replace(window, start=start, source="rows recomputed by this run")


def run_table_check(context, postgres, table: str, ts_column: str, what: str, outcome_fn):
    """Evaluate ``outcome_fn(conn, window)`` on ``table`` over the partition being materialized,
    else over the latest ``MARKETFLOW_CHECK_WINDOW_HOURS`` before its newest ``ts_column``."""
    from marketflow_assets.defs.common.outcome import (
        latest_window,
        load_check_settings,
        no_data,
        partition_window,
        report,
    )

    with postgres.get_connection() as conn:
        window = _recomputed_part(context, table, partition_window(context)) or latest_window(
            newest_ts(conn, table, ts_column), load_check_settings().window_hours
        )
        if window is None:
            return report(context, no_data(what))
        return report(context, outcome_fn(conn, window), window)
