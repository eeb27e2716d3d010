"""``price_indicators``: per-coin indicators of the raw prices, in PostgreSQL (hourly partitions).

A partition ``[start, end)`` is refreshed incrementally (see :mod:`marketflow_assets.indicators`):
only the raw rows in ``[start - 300 s, end)`` are read (pruned by ``date=`` directory and file
name), the per-coin state before ``start`` comes from ``price_indicators`` itself (two indexed
lookups per coin), the pure function runs in process for small windows (the newest hour) or on
buckets of coins with Spark's ``applyInPandas`` for large ones (backfills), and the rows replace
the period in one transaction. Cost depends on the partition, not on the history.
"""

import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from marketflow_assets import indicators as ind
from marketflow_assets.defs.common.launch import UI, tag_launcher
from marketflow_assets.defs.common.partitions import HOURLY, backfill_policy, self_dependency
from marketflow_assets.defs.common.policies import (
    TRANSIENT_IO_RETRY,
    live_row_count_metadata,
    retry_transient_io_only,
    table_metadata,
)
from marketflow_assets.defs.indicators import incremental
from marketflow_assets.defs.indicators.compute import (
    indicators_dataframe,
    raw_window_files,
    read_raw_window,
    read_raw_window_local,
    session,
    spark_to_pandas,
)
from marketflow_assets.defs.raw_prices.assets import RAW_PRICES_KEY
from marketflow_assets.market import (
    HISTORY_SOURCE_COLUMNS,
    RAW_SOURCE_COLUMNS,
    write_coin_market,
    write_market_history,
)
from marketflow_assets.raw_dataset import raw_row_count, read_window, retry_vanished, snapshot
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.resources.spark import LOCAL_MAX_ROWS, SparkResource
from marketflow_assets.schema import PRICE_INDICATORS_ASSET, SOURCE_COLUMN, SOURCE_LIVE

logger = logging.getLogger(__name__)

WATCHED_COINS = ("bitcoin", "ethereum")
#: Largest relative difference allowed between a live row and Dagster's recompute of it.
LIVE_TOLERANCE = 1e-9
#: Materialization metadata of the live comparison (asset check price_indicators_live_matches).
#: Metadata key: the version of the raw_prices Delta table the materialization read.
RAW_VERSION_META = "raw_table_version"
LIVE_META_COMPARED = "live_rows_compared"
LIVE_META_DIFFERING = "live_rows_differing"
LIVE_META_MAX_DIFF = "live_max_rel_diff"
LIVE_META_DIFFERENCES = "live_differences"


@dataclass
class IndicatorRefresh:
    """Outcome of refreshing ``price_indicators`` for ``[start, end)``."""

    start: datetime
    end: datetime
    rows: pd.DataFrame
    coins_with_state: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    engine: str = "none"  # where the rows were computed: "local", "spark" or "none" (no input)
    changed: int = 0  # rows deleted + inserted in the table
    recomputed_from: datetime | None = None  # incremental refresh: first recomputed instant
    plan: str = ""  # incremental refresh: what each hour needed and why
    # live path: its rows of the period compared with the recomputed ones before the write
    # replaced them (indicators.compare_indicator_rows: keys compared, rows differing > 1e-9)
    live_compared: int = 0
    live_max_diff: float = 0.0
    live_diffs: pd.DataFrame | None = None
    raw_version: int | None = None  # the raw_prices table version read (None: no table)


def refresh_indicators(
    spark,
    raw_dir: Path,
    postgres: PostgresResource,
    start: datetime,
    end: datetime,
    local_max_rows: int = LOCAL_MAX_ROWS,
    after_write=None,
) -> IndicatorRefresh:
    """Compute ``price_indicators`` for ``[start, end)`` and replace them in Postgres.

    ``start`` may be any instant (an incremental refresh starts at its first new row): the rows
    before it are the stored state. ``spark``: a SparkSession or a function returning one,
    called only when the raw window has more than ``local_max_rows`` rows; smaller windows are
    computed in this process. ``after_write``: see ``PostgresResource.replace_period``.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    postgres.ensure_tables()

    def compute():  # pins one table version, lists and reads it (again if it was vacuumed)
        timings.pop("read_state", None)
        snap = snapshot(raw_dir)
        result_version.append(snap.version)
        files = raw_window_files(snap, start, end)
        if not files:
            empty = pd.DataFrame(columns=list(ind.RAW_INPUT_COLUMNS))
            return ind.compute_indicators(empty), None, "none"
        state = postgres.fetch_indicator_state(None, start, ind.lookback_start(start))
        timings["read_state"] = time.perf_counter() - t0
        if raw_row_count(files, stop_above=local_max_rows) <= local_max_rows:
            raw = read_raw_window_local(files, start, end)
            return ind.compute_indicators(raw, state, start=start, end=end), state, "local"
        raw_df = read_raw_window(session(spark), snap, start, end, files)
        return spark_to_pandas(indicators_dataframe(raw_df, state, start, end)), state, "spark"

    result_version: list[int | None] = []
    rows, state, engine = retry_vanished(compute)
    if engine != "none":
        timings["compute"] = time.perf_counter() - t0 - sum(timings.values())
    result = IndicatorRefresh(start, end, rows, engine=engine, raw_version=result_version[-1])
    _compare_live(postgres, result)
    result.changed = postgres.replace_period(
        "price_indicators", rows, start, end, after_write=_counting(after_write, result)
    )
    timings["write"] = time.perf_counter() - t0 - sum(timings.values())
    result.coins_with_state = 0 if state is None else len(state)
    result.seconds = timings
    logger.info(
        "price_indicators %s .. %s: %d rows, %d coins (%d continued from stored state), %s, %.2fs",
        start.isoformat(),
        end.isoformat(),
        len(rows),
        rows["coin_id"].nunique(),
        result.coins_with_state,
        engine,
        time.perf_counter() - t0,
    )
    return result


def _compare_live(postgres: PostgresResource, result: IndicatorRefresh) -> None:
    """Before Dagster's rows replace the live path's rows of the period, record how far those
    differ from the recomputed ones (asset check ``price_indicators_live_matches``)."""
    live = postgres.read_period(
        "price_indicators", result.start, result.end, where=f"{SOURCE_COLUMN} = '{SOURCE_LIVE}'"
    )
    if live.empty:
        return
    diffs = ind.compare_indicator_rows(live, result.rows, tol=LIVE_TOLERANCE)
    result.live_compared = diffs.attrs["compared"]
    result.live_max_diff = diffs.attrs["max_diff"]
    result.live_diffs = diffs
    if len(diffs):
        logger.warning(
            "price_indicators %s .. %s: %d of %d live rows differ from the recompute (max %.3g)",
            result.start.isoformat(),
            result.end.isoformat(),
            len(diffs),
            result.live_compared,
            result.live_max_diff,
        )


def _counting(after_write, result: IndicatorRefresh):
    """``after_write`` that also stores the number of changed rows on ``result``."""

    def hook(cur, changed: int) -> None:
        result.changed = changed
        if after_write is not None:
            after_write(cur, changed)

    return hook


def refresh_indicators_incremental(
    spark,
    raw_dir: Path,
    postgres: PostgresResource,
    start: datetime,
    end: datetime,
    local_max_rows: int = LOCAL_MAX_ROWS,
    forced: str | None = None,
) -> IndicatorRefresh:
    """Bring ``price_indicators`` up to date for the hourly partitions in ``[start, end)``,
    recomputing only what new raw files affect, or everything with ``forced`` (why)
    (:mod:`marketflow_assets.defs.indicators.incremental`)."""
    t0 = time.perf_counter()
    raw_dir = snapshot(raw_dir)  # every hour of the window plans and reads ONE table version

    def compute(frm: datetime, stop: datetime, after_write) -> IndicatorRefresh:
        return refresh_indicators(
            spark, raw_dir, postgres, frm, stop, local_max_rows, after_write=after_write
        )

    steps = incremental.refresh_indicators_window(postgres, raw_dir, start, end, compute, forced)
    done = [result for _, result in steps if result is not None]
    rows = (
        pd.concat([r.rows for r in done], ignore_index=True)
        if done
        else ind.compute_indicators(pd.DataFrame(columns=list(ind.RAW_INPUT_COLUMNS)))
    )
    seconds: dict[str, float] = {}
    for r in done:
        for key, value in r.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    seconds["plan"] = time.perf_counter() - t0 - sum(seconds.values())
    return IndicatorRefresh(
        start,
        end,
        rows,
        max((r.coins_with_state for r in done), default=0),
        seconds,
        "+".join(sorted({r.engine for r in done})) or "none",
        changed=sum(r.changed for r in done),
        raw_version=raw_dir.version,
        recomputed_from=min((s.start for s, r in steps if r is not None), default=None),
        plan="; ".join(f"{s.start:%H:%M:%S}: {s.reason}" for s, _ in steps),
        live_compared=sum(r.live_compared for r in done),
        live_max_diff=max((r.live_max_diff for r in done), default=0.0),
        live_diffs=pd.concat(
            [r.live_diffs for r in done if r.live_diffs is not None and len(r.live_diffs)]
            or [pd.DataFrame(columns=["coin_id", "ts", "column", "live", "dagster", "diff"])],
            ignore_index=True,
        ),
    )


def indicator_metadata(result: IndicatorRefresh) -> dict[str, Any]:
    """Metadata shown in the UI (numeric values are plotted over time)."""
    rows = result.rows
    meta: dict[str, Any] = {
        "rows": dg.MetadataValue.int(len(rows)),
        "coins": dg.MetadataValue.int(int(rows["coin_id"].nunique())),
        "coins_continued_from_state": dg.MetadataValue.int(result.coins_with_state),
        "period_start": dg.MetadataValue.timestamp(result.start),
        "period_end": dg.MetadataValue.timestamp(result.end),
        "refresh_seconds": dg.MetadataValue.float(round(sum(result.seconds.values()), 3)),
        "engine": dg.MetadataValue.text(result.engine),
        "rows_changed": dg.MetadataValue.int(result.changed),
        RAW_VERSION_META: dg.MetadataValue.int(
            -1 if result.raw_version is None else result.raw_version
        ),
    }
    if result.plan:
        meta["incremental_plan"] = dg.MetadataValue.text(result.plan)
    meta.update(live_comparison_metadata(result))
    if result.recomputed_from is not None:
        meta["recomputed_from"] = dg.MetadataValue.timestamp(result.recomputed_from)
    if len(rows):
        meta["first_ts"] = dg.MetadataValue.timestamp(rows["ts"].min().to_pydatetime())
        meta["last_ts"] = dg.MetadataValue.timestamp(rows["ts"].max().to_pydatetime())
        meta["null_change_5min"] = dg.MetadataValue.int(int(rows["change_5min"].isna().sum()))
    for coin in WATCHED_COINS:
        coin_rows = rows[rows["coin_id"] == coin]
        if len(coin_rows):
            latest = coin_rows.loc[coin_rows["ts"].idxmax()]
            meta[f"latest_{coin}_price"] = dg.MetadataValue.float(float(latest["price"]))
            if pd.notna(latest["change_5min"]):
                meta[f"latest_{coin}_change_5min"] = dg.MetadataValue.float(
                    float(latest["change_5min"])
                )
    return meta


def live_comparison_metadata(result: IndicatorRefresh) -> dict[str, Any]:
    """The live-vs-recompute comparison of a refresh (read by the asset check
    ``price_indicators_live_matches``): keys compared, rows differing, largest difference and,
    when any differ, the worst ones (coin, ts, column, values)."""
    diffs = result.live_diffs
    differing = 0 if diffs is None else len(diffs)
    meta: dict[str, Any] = {
        LIVE_META_COMPARED: dg.MetadataValue.int(result.live_compared),
        LIVE_META_DIFFERING: dg.MetadataValue.int(differing),
        LIVE_META_MAX_DIFF: dg.MetadataValue.float(float(result.live_max_diff)),
    }
    if differing:
        lines = [
            "| coin | ts | column | live | dagster | rel. diff |",
            "|---|---|---|---:|---:|---:|",
        ]
        for row in diffs.head(20).itertuples(index=False):
            lines.append(
                f"| {row.coin_id} | {pd.Timestamp(row.ts).isoformat()} | {row.column} | "
                f"{row.live!r} | {row.dagster!r} | {row.diff:.3g} |"
            )
        meta[LIVE_META_DIFFERENCES] = dg.MetadataValue.md("\n".join(lines))
    return meta


def refresh_coin_market(postgres: PostgresResource, raw_dir: Path, result) -> int:
    """Move ``coin_market`` on to the newest snapshot the refresh computed (its coins' raw
    market fields, :mod:`marketflow_assets.market`; rows only ever move forward in time) and add
    the volume and market cap of every poll it computed to ``coin_market_history``."""
    if result.rows is None or result.rows.empty:
        return 0
    oldest = pd.Timestamp(result.rows["ts"].min()).to_pydatetime()
    newest = pd.Timestamp(result.rows["ts"].max()).to_pydatetime()
    end = newest + timedelta(microseconds=1)
    latest = read_window(raw_dir, newest, end, RAW_SOURCE_COLUMNS)
    polls = read_window(raw_dir, oldest, end, HISTORY_SOURCE_COLUMNS)
    # tables: ensured by the refresh; coin_market first, then its history, as the live path does
    with postgres.get_connection() as conn, conn.cursor() as cur:
        rows = write_coin_market(cur, latest[latest["ts"] == pd.Timestamp(newest)], history=False)
        write_market_history(cur, polls)
        return rows


def build_price_indicators(
    partitions_def: dg.TimeWindowPartitionsDefinition = HOURLY,
) -> dg.AssetsDefinition:
    with warnings.catch_warnings():  # BackfillPolicy is beta in this Dagster version
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _build_price_indicators(partitions_def)


def _build_price_indicators(
    partitions_def: dg.TimeWindowPartitionsDefinition,
) -> dg.AssetsDefinition:
    @dg.asset(
        name=PRICE_INDICATORS_ASSET,
        deps=[
            RAW_PRICES_KEY,
            dg.AssetDep(PRICE_INDICATORS_ASSET, partition_mapping=self_dependency()),
        ],
        partitions_def=partitions_def,
        backfill_policy=backfill_policy(),
        group_name="market_data",
        kinds={"spark", "postgres"},
        owners=["team:marketflow"],
        tags={"domain": "crypto"},
        code_version=ind.INDICATOR_FORMULA_VERSION,
        retry_policy=TRANSIENT_IO_RETRY,
        metadata={
            **table_metadata("price_indicators"),
            "primary_key": "(coin_id, ts)",
            "formulas": "docs/INDICATORS.md (code: marketflow_assets/indicators.py)",
        },
    )
    def price_indicators(
        context: dg.AssetExecutionContext,
        postgres: PostgresResource,
        raw_data: RawDataResource,
        pyspark: SparkResource,
    ) -> dg.MaterializeResult:
        """Per-coin price indicators in PostgreSQL table `price_indicators`.

        For every raw observation: `change_1min` / `change_5min` (% change vs the latest price at
        least 60 s / 300 s older), `sma_5min` and `volatility_5min` (mean and sample std over the
        trailing 5 minutes), `ema_3min` (time-decay EMA, tau = 180 s, over the coin's whole
        history). Hourly UTC partitions; each continues from the previous partition's stored
        state, and within the hour a refresh recomputes only the rows from the oldest new raw
        row on (+ 5 min lookback and the stored EMA): a live refresh costs one poll, a late
        row recomputes what it affects. Writes are idempotent.
        """
        window = context.partition_time_window
        # launched by hand (the UI's "Materialize"): recompute, whatever the ledger says
        by_hand = tag_launcher(context) == UI
        context.log.info(
            f"refreshing price_indicators for [{window.start}, {window.end})"
            + (" (launched by hand: recomputing)" if by_hand else "")
        )
        with retry_transient_io_only():
            result = refresh_indicators_incremental(
                pyspark.get_session,
                raw_data.raw_dir,
                postgres,
                window.start,
                window.end,
                local_max_rows=pyspark.max_local_rows,
                forced="launched by hand" if by_hand else None,
            )
            market_rows = refresh_coin_market(postgres, raw_data.raw_dir, result)
            # an estimate: an exact count(*) would scan the whole table on every live refresh
            table_rows = postgres.estimated_row_count("price_indicators")
        return dg.MaterializeResult(
            metadata={
                **indicator_metadata(result),
                **live_row_count_metadata(result, table_rows),
                "coin_market_rows": dg.MetadataValue.int(market_rows),
            }
        )

    return price_indicators


price_indicators = build_price_indicators()
