"""Data-quality checks on the external ``raw_prices`` Parquet dataset.

The dataset is written outside Dagster by the Spark streaming job
(``$MARKETFLOW_DATA_DIR/raw_prices/date=YYYY-MM-DD/*.parquet``); files are listed
and read with :mod:`marketflow_assets.raw_dataset`, which prunes by day directory and by the
``ts`` range in the streaming job's file names, so a check of the last hour opens only that
hour's files.

``*_outcome(df, window)`` are plain functions over a pandas DataFrame (columns ``id``,
``current_price``, ``ts``); one ``@dg.multi_asset_check`` reads the window once and reports all
three checks.
"""

import logging
from datetime import timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from marketflow_assets.defs.common.outcome import (
    Outcome,
    Window,
    latest_window,
    load_check_settings,
    no_data,
    partition_window,
    sample_table,
)
from marketflow_assets.raw_dataset import newest_raw_ts, read_window
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.schema import RAW_PRICES_ASSET

log = logging.getLogger(__name__)

ASSET = dg.AssetKey(RAW_PRICES_ASSET)
#: A poll is "collapsed" when it holds fewer than this fraction of its reference row count.
COLLAPSE_RATIO = 0.5
#: The reference of a poll = median row count of up to this many preceding polls.
REFERENCE_POLLS = 5
#: Extra history read before the window so its first polls have a reference.
REFERENCE_LOOKBACK = timedelta(minutes=10)


# ------------------------------------------------------------------------------------------
# Check functions (plain, over a DataFrame)
# ------------------------------------------------------------------------------------------
def _in_window(df: pd.DataFrame, window: Window) -> pd.DataFrame:
    return df[(df["ts"] >= window.start) & (df["ts"] < window.end)]


def prices_positive_outcome(df: pd.DataFrame, window: Window) -> Outcome:
    """Every row has an ``id`` and a finite ``current_price`` > 0."""
    rows = _in_window(df, window)
    if not len(rows):
        return no_data("raw rows")
    price = pd.to_numeric(rows["current_price"], errors="coerce").astype("float64")
    bad = rows[~(np.isfinite(price) & (price > 0)) | rows["id"].isna()]
    return Outcome(
        passed=bad.empty,
        description=(
            f"{len(bad)} of {len(rows)} raw rows have no id or a NULL, non-positive or"
            " non-finite current_price."
        ),
        metadata={
            "rows": len(rows),
            "bad_rows": len(bad),
            "sample": sample_table(bad.sort_values(["ts", "id"]).to_dict("records")),
        },
    )


def unique_key_outcome(df: pd.DataFrame, window: Window) -> Outcome:
    """At most one row per (``id``, ``ts``) (the exactly-once guarantee of the Spark job)."""
    rows = _in_window(df, window)
    if not len(rows):
        return no_data("raw rows")
    counts = rows.groupby(["id", "ts"], dropna=False).size()
    dups = counts[counts > 1].rename("copies").reset_index()
    return Outcome(
        passed=dups.empty,
        description=f"{len(dups)} (id, ts) keys occur more than once among {len(rows)} raw rows.",
        metadata={
            "rows": len(rows),
            "duplicate_keys": len(dups),
            "sample": sample_table(dups.sort_values(["ts", "id"]).to_dict("records")),
        },
    )


def poll_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """Rows per poll (``ts``) with the reference size: median of up to 5 preceding polls."""
    sizes = df.groupby("ts").size().rename("rows").sort_index().reset_index()
    sizes["reference"] = sizes["rows"].shift(1).rolling(REFERENCE_POLLS, min_periods=1).median()
    return sizes


def rows_per_poll_outcome(df: pd.DataFrame, window: Window) -> Outcome:
    """No poll in the window holds fewer than half the rows of its reference (the median of the
    up to 5 polls before it; ``df`` may start earlier than the window to supply them)."""
    if not len(_in_window(df, window)):
        return no_data("raw rows")
    sizes = poll_sizes(df)
    sizes = sizes[(sizes["ts"] >= window.start) & (sizes["ts"] < window.end)]
    collapsed = sizes[sizes["rows"] < COLLAPSE_RATIO * sizes["reference"]]
    latest = sizes.iloc[-1]
    return Outcome(
        passed=collapsed.empty,
        description=(
            f"{len(collapsed)} of {len(sizes)} polls hold fewer than half the rows of the polls"
            " before them."
        ),
        metadata={
            "polls": len(sizes),
            "collapsed_polls": len(collapsed),
            "latest_poll_rows": int(latest["rows"]),
            "min_poll_rows": int(sizes["rows"].min()),
            "max_poll_rows": int(sizes["rows"].max()),
            "sample": sample_table(collapsed.to_dict("records")),
        },
        severity=dg.AssetCheckSeverity.WARN,
    )


OUTCOMES = {
    "prices_positive": prices_positive_outcome,
    "unique_id_ts": unique_key_outcome,
    "rows_per_poll_stable": rows_per_poll_outcome,
}


def evaluate(
    raw_dir: Path, window: Window | None = None, names: list[str] | None = None
) -> dict[str, tuple[Outcome, Window | None]]:
    """Read the window once (default: last ``MARKETFLOW_CHECK_WINDOW_HOURS`` of data) and run
    the named raw checks (default: all)."""
    names = list(OUTCOMES) if names is None else names
    if window is None:
        window = latest_window(newest_raw_ts(raw_dir), load_check_settings().window_hours)
    if window is None:
        return {name: (no_data("raw rows"), None) for name in names}
    df = read_window(raw_dir, window.start - REFERENCE_LOOKBACK, window.end)
    return {name: (OUTCOMES[name](df, window), window) for name in names}


# ------------------------------------------------------------------------------------------
# Dagster wrapper
# ------------------------------------------------------------------------------------------
_DESCRIPTIONS = {
    "prices_positive": "Every raw row has an id and a finite current_price > 0.",
    "unique_id_ts": "At most one raw row per (id, ts).",
    "rows_per_poll_stable": (
        "No poll holds fewer than half the rows of the polls before it (WARN: a source or"
        " ingest outage)."
    ),
}
SPECS = [
    dg.AssetCheckSpec(
        name,
        asset=ASSET,
        description=_DESCRIPTIONS[name],
        blocking=name != "rows_per_poll_stable",
        metadata={"dataset": "raw_prices (Parquet)", "window_env": "MARKETFLOW_CHECK_WINDOW_HOURS"},
    )
    for name in OUTCOMES
]


@dg.multi_asset_check(specs=SPECS, can_subset=True, name="raw_prices_quality_checks")
def raw_prices_quality_checks(context: dg.AssetCheckExecutionContext, raw_data: RawDataResource):
    """Reads the checked window of raw Parquet once and reports the selected raw checks."""
    names = [key.name for key in context.selected_asset_check_keys]
    for name, (outcome, window) in evaluate(
        raw_data.raw_dir, partition_window(context), names
    ).items():
        if outcome.skipped:  # no result: Dagster records the check as SKIPPED
            context.log.info(f"{name}: {outcome.description}")
            continue
        yield outcome.to_result(window, asset_key=ASSET, check_name=name)


CHECKS = [raw_prices_quality_checks]
