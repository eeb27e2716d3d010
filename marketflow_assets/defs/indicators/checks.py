"""Data-quality checks on the ``price_indicators`` table (PostgreSQL).

Each ``*_outcome(conn, window)`` is a plain function over a psycopg2 connection and a time
window; the ``@dg.asset_check`` wrappers below pick the window (the partition being
materialized, or the last ``MARKETFLOW_CHECK_WINDOW_HOURS`` of data) and report the outcome.
"""

from collections.abc import Callable
from datetime import datetime, timedelta

import dagster as dg
import pandas as pd

from marketflow_assets.defs.common.outcome import (
    REL_TOLERANCE,
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
from marketflow_assets.indicators import WINDOW_SECONDS
from marketflow_assets.raw_dataset import read_window
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.schema import PRICE_INDICATORS_ASSET

TABLE = "price_indicators"
ASSET = dg.AssetKey(PRICE_INDICATORS_ASSET)

_IN_WINDOW = "ts >= %(start)s AND ts < %(end)s"


def _params(window: Window) -> dict:
    return {"start": window.start, "end": window.end}


def _rows(conn, window: Window) -> int:
    return fetch_one(conn, f"SELECT count(*) FROM {TABLE} WHERE {_IN_WINDOW}", _params(window))


def _bad_rows_outcome(conn, window: Window, predicate: str, column: str, problem: str) -> Outcome:
    """Fail when rows of the window match ``predicate``; report their count and a sample."""
    if not table_exists(conn, TABLE) or not (rows := _rows(conn, window)):
        return no_data("indicator rows")
    bad_sql = f"FROM {TABLE} WHERE {_IN_WINDOW} AND ({predicate})"
    bad = fetch_one(conn, f"SELECT count(*) {bad_sql}", _params(window))
    sample = fetch_dicts(
        conn,
        f"SELECT coin_id, ts, {column} {bad_sql} ORDER BY ts, coin_id LIMIT 10",
        _params(window),
    )
    return Outcome(
        passed=bad == 0,
        description=f"{bad} of {rows} rows have {problem}.",
        metadata={"rows": rows, "bad_rows": bad, "sample": sample_table(sample)},
    )


def prices_positive_outcome(conn, window: Window) -> Outcome:
    """Every row has a finite ``price`` > 0 (NULL, zero, negative, NaN and infinity fail)."""
    return _bad_rows_outcome(
        conn,
        window,
        "price IS NULL OR NOT (price > 0) OR price IN ('NaN'::float8, 'Infinity'::float8)",
        "price",
        "a NULL, non-positive or non-finite price",
    )


def unique_key_outcome(conn, window: Window) -> Outcome:
    """(``coin_id``, ``ts``) is unique (guards tables created without the primary key)."""
    if not table_exists(conn, TABLE) or not (rows := _rows(conn, window)):
        return no_data("indicator rows")
    dup_sql = (
        f"SELECT coin_id, ts, count(*) AS copies FROM {TABLE} WHERE {_IN_WINDOW}"
        " GROUP BY coin_id, ts HAVING count(*) > 1"
    )
    dups = fetch_one(conn, f"SELECT count(*) FROM ({dup_sql}) d", _params(window))
    sample = fetch_dicts(conn, dup_sql + " ORDER BY ts, coin_id LIMIT 10", _params(window))
    return Outcome(
        passed=dups == 0,
        description=f"{dups} (coin_id, ts) keys occur more than once among {rows} rows.",
        metadata={"rows": rows, "duplicate_keys": dups, "sample": sample_table(sample)},
    )


def sma_within_range_outcome(
    conn, window: Window, raw: Callable[[datetime, datetime], pd.DataFrame] | None = None
) -> Outcome:
    """``sma_5min`` lies within [min, max] of the coin's prices in ``(ts - 300 s, ts]``.

    The window's prices are the stored ``price`` values (one row per raw observation), including
    rows before the checked window. A row outside those bounds is re-checked against the raw
    observations of its window when ``raw(start, end)`` (a reader of raw rows: ``id``,
    ``current_price``, ``ts``) is given, so a table holding only part of the history is not
    flagged for prices it does not store. Tolerance: ``1e-9 * max(|min|, |max|)``.
    """
    if not table_exists(conn, TABLE) or not (rows := _rows(conn, window)):
        return no_data("indicator rows")
    bad_sql = f"""
        SELECT a.coin_id, a.ts, a.sma_5min, min(b.price) AS window_min, max(b.price) AS window_max
        FROM {TABLE} a
        JOIN {TABLE} b ON b.coin_id = a.coin_id
             AND b.ts > a.ts - make_interval(secs => %(secs)s) AND b.ts <= a.ts
        WHERE a.ts >= %(start)s AND a.ts < %(end)s AND a.sma_5min IS NOT NULL
        GROUP BY a.coin_id, a.ts, a.sma_5min
        HAVING a.sma_5min = 'NaN'::float8
            OR a.sma_5min < min(b.price) - %(tol)s * greatest(abs(min(b.price)), abs(max(b.price)))
            OR a.sma_5min > max(b.price) + %(tol)s * greatest(abs(min(b.price)), abs(max(b.price)))
    """
    params = {**_params(window), "secs": WINDOW_SECONDS, "tol": REL_TOLERANCE}
    bad_rows = fetch_dicts(conn, bad_sql + " ORDER BY a.ts, a.coin_id", params)
    if bad_rows and raw is not None:
        bad_rows = _outside_raw_bounds(bad_rows, raw)
    return Outcome(
        passed=not bad_rows,
        description=(
            f"{len(bad_rows)} of {rows} rows have sma_5min outside the min/max price of their"
            " 5-minute window."
        ),
        metadata={"rows": rows, "bad_rows": len(bad_rows), "sample": sample_table(bad_rows)},
    )


def _outside_raw_bounds(bad_rows: list[dict], raw) -> list[dict]:
    """The rows whose SMA is also outside [min, max] of stored + raw prices of their window."""
    span = timedelta(seconds=WINDOW_SECONDS)
    start = min(r["ts"] for r in bad_rows) - span
    frame = raw(start, max(r["ts"] for r in bad_rows) + timedelta(microseconds=1))
    still_bad = []
    for row in bad_rows:
        if len(frame):
            ts = pd.Timestamp(row["ts"])
            mask = (frame["id"] == row["coin_id"]) & (frame["ts"] > ts - span) & (frame["ts"] <= ts)
            prices = pd.to_numeric(frame.loc[mask, "current_price"], errors="coerce").dropna()
        else:
            prices = pd.Series(dtype="float64")
        lo = min([row["window_min"], *prices]) if len(prices) else row["window_min"]
        hi = max([row["window_max"], *prices]) if len(prices) else row["window_max"]
        sma, tol = row["sma_5min"], REL_TOLERANCE * max(abs(lo), abs(hi))
        if not (lo - tol <= sma <= hi + tol):  # also true for NaN
            still_bad.append({**row, "window_min": lo, "window_max": hi})
    return still_bad


def volatility_non_negative_outcome(conn, window: Window) -> Outcome:
    """``volatility_5min`` is NULL (fewer than 2 observations) or a finite value >= 0."""
    return _bad_rows_outcome(
        conn,
        window,
        "volatility_5min IS NOT NULL AND (volatility_5min < 0"
        " OR volatility_5min IN ('NaN'::float8, 'Infinity'::float8))",
        "volatility_5min",
        "a negative or non-finite volatility_5min",
    )


def _run(context, postgres: PostgresResource, outcome_fn) -> dg.AssetCheckResult | None:
    return run_table_check(context, postgres, TABLE, "ts", "indicator rows", outcome_fn)


_META = {"table": TABLE, "window_env": "MARKETFLOW_CHECK_WINDOW_HOURS"}


@dg.asset_check(asset=ASSET, blocking=True, metadata=_META)
def prices_positive(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult | None:
    """No NULL, zero, negative or non-finite `price`. Blocking: stops `market_movers`."""
    return _run(context, postgres, prices_positive_outcome)


@dg.asset_check(asset=ASSET, blocking=True, metadata=_META)
def unique_coin_ts(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult | None:
    """(`coin_id`, `ts`) is unique. Blocking: duplicates would double-count movers."""
    return _run(context, postgres, unique_key_outcome)


@dg.asset_check(asset=ASSET, metadata=_META)
def sma_within_window_range(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource, raw_data: RawDataResource
) -> dg.AssetCheckResult | None:
    """`sma_5min` lies between the min and max price of its 5-minute window (stored prices,
    and the raw observations where the table holds only part of the window)."""

    def outcome(conn, window):
        return sma_within_range_outcome(
            conn, window, raw=lambda start, end: read_window(raw_data.raw_dir, start, end)
        )

    return _run(context, postgres, outcome)


@dg.asset_check(asset=ASSET, metadata=_META)
def volatility_non_negative(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult | None:
    """`volatility_5min` is NULL or >= 0."""
    return _run(context, postgres, volatility_non_negative_outcome)


def live_matches_outcome(metadata: dict | None) -> Outcome:
    """The live path's rows vs Dagster's recompute, from the metadata of the latest
    ``price_indicators`` materialization that compared any (``live_comparison_metadata``).
    Fails when any live row differed by more than 1e-9 (relative), listing the coins and ts."""
    from marketflow_assets.defs.indicators.assets import (
        LIVE_META_COMPARED,
        LIVE_META_DIFFERENCES,
        LIVE_META_DIFFERING,
        LIVE_META_MAX_DIFF,
        LIVE_TOLERANCE,
    )

    if not metadata:
        return Outcome(True, "No live rows compared with Dagster's recompute yet.")

    def value(key, default=None):
        entry = metadata.get(key)
        return default if entry is None else getattr(entry, "value", entry)

    compared = int(value(LIVE_META_COMPARED, 0))
    differing = int(value(LIVE_META_DIFFERING, 0))
    max_diff = float(value(LIVE_META_MAX_DIFF, 0.0))
    meta = {
        "live_rows_compared": dg.MetadataValue.int(compared),
        "live_rows_differing": dg.MetadataValue.int(differing),
        "live_max_rel_diff": dg.MetadataValue.float(max_diff),
        "tolerance": dg.MetadataValue.float(LIVE_TOLERANCE),
    }
    if differing:
        meta["differences"] = dg.MetadataValue.md(str(value(LIVE_META_DIFFERENCES, "")))
        return Outcome(
            False,
            f"{differing} of {compared} live rows differ from Dagster's recompute by more than "
            f"{LIVE_TOLERANCE:g} (max {max_diff:.3g}); see `differences`.",
            meta,
        )
    return Outcome(
        True,
        f"{compared} live rows equal Dagster's recompute (max relative difference {max_diff:.3g}).",
        meta,
    )


#: How many of the newest materializations the check looks through for a comparison.
LIVE_LOOKBACK_MATERIALIZATIONS = 50


@dg.asset_check(
    asset=ASSET,
    metadata={"table": TABLE, "reads": "materialization metadata live_rows_* of price_indicators"},
)
def price_indicators_live_matches(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The live path's rows (`source = 'live'`) equal Dagster's exact recompute (<= 1e-9).

    Before a refresh replaces live rows, it compares them with its recomputed rows and records
    the outcome as materialization metadata (`live_rows_compared`, `live_rows_differing`,
    `live_max_rel_diff`, `live_differences`); this check reads the newest such record."""
    from marketflow_assets.defs.indicators.assets import LIVE_META_COMPARED

    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=ASSET), limit=LIVE_LOOKBACK_MATERIALIZATIONS
    ).records
    metadata = None
    for record in records:
        meta = record.asset_materialization.metadata
        entry = meta.get(LIVE_META_COMPARED)
        if entry is not None and int(entry.value) > 0:
            metadata = meta
            break
    return live_matches_outcome(metadata).to_result()


CHECKS = [
    prices_positive,
    unique_coin_ts,
    sma_within_window_range,
    volatility_non_negative,
    price_indicators_live_matches,
]
