"""Data-quality checks on the ``market_movers`` table (PostgreSQL).

Plain ``*_outcome(conn, window)`` functions plus thin ``@dg.asset_check`` wrappers; the window
is the partition being materialized, or the last ``MARKETFLOW_CHECK_WINDOW_HOURS`` of snapshots.
"""

import dagster as dg

from marketflow_assets.defs.common.outcome import (
    Outcome,
    Window,
    no_data,
    sample_table,
)
from marketflow_assets.defs.common.tables import (
    fetch_dicts,
    fetch_one,
    run_table_check,
    table_exists,
)
from marketflow_assets.indicators import TOP_N
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.schema import MARKET_MOVERS_ASSET

TABLE = "market_movers"
ASSET = dg.AssetKey(MARKET_MOVERS_ASSET)
DIRECTIONS = ("gainer", "loser")

_IN_WINDOW = "snapshot_ts >= %(start)s AND snapshot_ts < %(end)s"


def _params(window: Window) -> dict:
    return {"start": window.start, "end": window.end, "top_n": TOP_N, "directions": DIRECTIONS}


def _rows(conn, window: Window) -> int:
    return fetch_one(conn, f"SELECT count(*) FROM {TABLE} WHERE {_IN_WINDOW}", _params(window))


def top_five_shape_outcome(conn, window: Window) -> Outcome:
    """Per (snapshot, direction): at most 5 rows, ranks exactly 1..n, each coin once, and
    ``direction`` is ``gainer`` or ``loser``."""
    if not table_exists(conn, TABLE) or not (rows := _rows(conn, window)):
        return no_data("mover rows")
    bad_sql = f"""
        SELECT snapshot_ts, direction, count(*) AS n_rows, min(rank) AS min_rank,
               max(rank) AS max_rank, count(DISTINCT rank) AS n_ranks,
               count(DISTINCT coin_id) AS n_coins
        FROM {TABLE} WHERE {_IN_WINDOW}
        GROUP BY snapshot_ts, direction
        HAVING count(*) > %(top_n)s OR min(rank) <> 1 OR max(rank) <> count(*)
            OR count(DISTINCT rank) <> count(*) OR count(DISTINCT coin_id) <> count(*)
            OR direction IS NULL OR direction NOT IN %(directions)s
    """
    bad = fetch_dicts(conn, bad_sql + " ORDER BY snapshot_ts, direction", _params(window))
    snapshots = fetch_one(
        conn, f"SELECT count(DISTINCT snapshot_ts) FROM {TABLE} WHERE {_IN_WINDOW}", _params(window)
    )
    return Outcome(
        passed=not bad,
        description=(
            f"{len(bad)} (snapshot, direction) groups of {snapshots} snapshots break 'at most"
            f" {TOP_N}, ranks 1..n, each coin once'."
        ),
        metadata={
            "rows": rows,
            "snapshots": snapshots,
            "bad_groups": len(bad),
            "sample": sample_table(bad),
        },
    )


def sorted_by_change_outcome(conn, window: Window) -> Outcome:
    """By rank, gainers' ``change_5min`` is non-increasing and losers' non-decreasing; NULL or
    non-finite changes fail."""
    if not table_exists(conn, TABLE) or not (rows := _rows(conn, window)):
        return no_data("mover rows")
    bad_sql = f"""
        SELECT snapshot_ts, direction, rank, coin_id, change_5min, prev_change
        FROM (
            SELECT snapshot_ts, direction, rank, coin_id, change_5min,
                   lag(change_5min) OVER (PARTITION BY snapshot_ts, direction ORDER BY rank)
                       AS prev_change
            FROM {TABLE} WHERE {_IN_WINDOW}
        ) m
        WHERE change_5min IS NULL OR change_5min IN ('NaN'::float8, 'Infinity'::float8,
                                                     '-Infinity'::float8)
           OR (direction = 'gainer' AND change_5min > prev_change)
           OR (direction = 'loser' AND change_5min < prev_change)
    """
    bad = fetch_dicts(conn, bad_sql + " ORDER BY snapshot_ts, direction, rank", _params(window))
    return Outcome(
        passed=not bad,
        description=(
            f"{len(bad)} of {rows} mover rows are out of order (gainers must be descending and"
            " losers ascending by change_5min) or have no change_5min."
        ),
        metadata={"rows": rows, "bad_rows": len(bad), "sample": sample_table(bad)},
    )


def _run(context, postgres: PostgresResource, outcome_fn) -> dg.AssetCheckResult | None:
    return run_table_check(context, postgres, TABLE, "snapshot_ts", "mover rows", outcome_fn)


_META = {"table": TABLE, "window_env": "MARKETFLOW_CHECK_WINDOW_HOURS"}


@dg.asset_check(asset=ASSET, metadata=_META)
def at_most_five_per_direction(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult | None:
    """Each snapshot has at most 5 gainers and 5 losers, ranked 1..n, each coin once."""
    return _run(context, postgres, top_five_shape_outcome)


@dg.asset_check(asset=ASSET, metadata=_META)
def movers_sorted(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult | None:
    """Gainers are sorted by `change_5min` descending, losers ascending (rank 1 first)."""
    return _run(context, postgres, sorted_by_change_outcome)


CHECKS = [at_most_five_per_direction, movers_sorted]
