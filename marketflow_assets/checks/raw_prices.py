"""Data-quality checks on the external ``raw_prices`` Parquet dataset.

The dataset is written outside Dagster by the Spark streaming job
(``$MARKETFLOW_DATA_DIR/raw_prices/date=YYYY-MM-DD/*.parquet``); files are listed with the
assets' own helper (:func:`marketflow_assets.assets.raw_prices.list_raw_files`), which prunes by
day directory and by the ``ts`` range in the streaming job's file names, so a check of the last
hour opens only that hour's files.

``*_outcome(df, window)`` are plain functions over a pandas DataFrame (columns ``id``,
``current_price``, ``ts``); one ``@dg.multi_asset_check`` reads the window once and reports all
three checks.
"""

import logging
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from marketflow_assets.assets.raw_prices import list_raw_files, raw_days
from marketflow_assets.checks.common import (
    Outcome,
    Window,
    latest_window,
    load_check_settings,
    no_data,
    partition_window,
    sample_table,
)
from marketflow_assets.resources.raw_data import RawDataResource

log = logging.getLogger(__name__)

ASSET = dg.AssetKey("raw_prices")
COLUMNS = ("id", "current_price", "ts")
#: A poll is "collapsed" when it holds fewer than this fraction of its reference row count.
COLLAPSE_RATIO = 0.5
#: The reference of a poll = median row count of up to this many preceding polls.
REFERENCE_POLLS = 5
#: Extra history read before the window so its first polls have a reference.
REFERENCE_LOOKBACK = timedelta(minutes=10)


# ------------------------------------------------------------------------------------------
# Reading the dataset (file listing shared with the assets: assets/raw_prices.py)
# ------------------------------------------------------------------------------------------
def _to_utc(series: pd.Series) -> pd.Series:
    ts = pd.to_datetime(series)
    return ts.dt.tz_localize(UTC) if ts.dt.tz is None else ts.dt.tz_convert(UTC)


def read_files(files: list[Path], columns: tuple[str, ...] = COLUMNS) -> pd.DataFrame:
    """Read ``columns`` of ``files`` into one DataFrame with ``ts`` as UTC timestamps."""
    import pyarrow.parquet as pq

    frames = [pq.read_table(f, columns=list(columns)).to_pandas() for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    df = pd.concat(frames, ignore_index=True)
    if "ts" in df:
        df["ts"] = _to_utc(df["ts"])
    return df


def newest_raw_ts(raw_dir: Path) -> datetime | None:
    """Newest ``ts`` in the dataset, from the newest non-empty ``date=`` partition.

    Files named by the streaming job carry their max ``ts`` in the name (no read); other files
    are read (``ts`` column only).
    """
    for day in reversed(raw_days(raw_dir)):
        start = datetime.combine(day, time(), UTC)
        files = list_raw_files(raw_dir, start, start + timedelta(days=1))
        newest = [f.max_ts for f in files if f.max_ts is not None]
        df = read_files([f.path for f in files if f.max_ts is None], columns=("ts",))
        if len(df) and df["ts"].notna().any():
            newest.append(df["ts"].max().to_pydatetime())
        if newest:
            return max(newest)
    return None


def read_window(raw_dir: Path, start: datetime, end: datetime) -> pd.DataFrame:
    """Rows with ``start <= ts < end`` (opens only files that may hold such rows)."""
    df = read_files([f.path for f in list_raw_files(raw_dir, start, end)])
    if not len(df):
        return df
    return df[(df["ts"] >= start) & (df["ts"] < end)].reset_index(drop=True)


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
        yield outcome.to_result(window, asset_key=ASSET, check_name=name)


CHECKS = [raw_prices_quality_checks]
