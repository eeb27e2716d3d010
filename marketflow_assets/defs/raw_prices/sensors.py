"""Observation sensor for ``raw_prices``: reports what the streaming job committed to the table.

The ``raw_prices`` Delta table has a version per commit, so the cursor is simply the last version
reported. A tick opens the table (its newest checkpoint plus at most 99 commit files, whatever
the history), and when the version moved reads the commit infos of the new versions only
(``DeltaTable.history(limit=new commits)``): rows and files the appends added, their ``ts``
range (recorded in each commit's metadata by :func:`marketflow_assets.raw_dataset.append_batch`).
Compactions (OPTIMIZE, VACUUM) add no rows and are not reported as new data.

New commits produce one runless ``AssetMaterialization`` of ``raw_prices`` whose data version
is the table version (tag ``dagster/data_version``) and whose metadata the UI plots over time:
the table version, new rows and commits, the new data's time range, the newest ``ts`` and its lag
behind the wall clock. The automation sensor reacts to these events.
"""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from marketflow_assets.defs.raw_prices.assets import RAW_PRICES_KEY
from marketflow_assets.raw_dataset import OPERATION_KEY, newest_raw_ts, open_table, snapshot_of
from marketflow_assets.resources.raw_data import RawDataResource

#: At most this many commit infos are read in one tick (a sensor off for days catches up in
#: several ticks' worth of metadata; the newest version is reported either way).
MAX_COMMITS_PER_TICK = 5_000
#: Commit operations that add rows (compactions and vacuums do not).
DATA_OPERATIONS = ("stream", "append", "convert")


@dataclass
class NewCommits:
    """What the table gained since the cursor's version."""

    version: int
    previous: int | None
    commits: int = 0
    rows: int = 0
    files: int = 0
    oldest_ts: datetime | None = None
    newest_new_ts: datetime | None = None
    operations: dict[str, int] = field(default_factory=dict)


def parse_cursor(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(json.loads(text)["version"])
    except (ValueError, KeyError, TypeError):
        return None  # a cursor of the pre-Delta sensor: report everything once


def dump_cursor(version: int) -> str:
    return json.dumps({"version": version})


def _ts(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def new_commits(table, previous: int | None) -> NewCommits:
    """Rows/files the commits after version ``previous`` added (from their commit infos)."""
    version = table.version()
    out = NewCommits(version, previous)
    count = version + 1 if previous is None else version - previous
    if count <= 0:
        return out
    for info in table.history(limit=min(count, MAX_COMMITS_PER_TICK)):
        if previous is not None and int(info.get("version", -1)) <= previous:
            continue
        operation = info.get(OPERATION_KEY) or str(info.get("operation", "")).lower()
        out.commits += 1
        out.operations[operation] = out.operations.get(operation, 0) + 1
        if operation not in DATA_OPERATIONS:
            continue
        metrics = info.get("operationMetrics") or {}
        out.rows += int(metrics.get("num_added_rows", 0) or 0)
        out.files += int(metrics.get("num_added_files", 0) or 0)
        lo, hi = _ts(info.get("marketflow.ts_min")), _ts(info.get("marketflow.ts_max"))
        if lo is not None:
            out.oldest_ts = lo if out.oldest_ts is None else min(out.oldest_ts, lo)
        if hi is not None:
            out.newest_new_ts = hi if out.newest_new_ts is None else max(out.newest_new_ts, hi)
    return out


def observe(raw_dir: Path, table, new: NewCommits, now: datetime | None = None) -> dict:
    """Metadata describing the new commits (and the table as a whole)."""
    now = now or datetime.now(UTC)
    meta: dict = {
        "table_version": dg.MetadataValue.int(new.version),
        "new_commits": dg.MetadataValue.int(new.commits),
        "new_rows": dg.MetadataValue.int(new.rows),
        "new_files": dg.MetadataValue.int(new.files),
        "operations": dg.MetadataValue.json(new.operations),
        "path": dg.MetadataValue.path(str(raw_dir)),
    }
    if new.oldest_ts is not None:
        meta["oldest_new_ts"] = dg.MetadataValue.timestamp(new.oldest_ts)
    newest = newest_raw_ts(snapshot_of(table, Path(raw_dir)))
    if newest is not None:
        meta["newest_ts"] = dg.MetadataValue.timestamp(newest)
        meta["lag_seconds"] = dg.MetadataValue.float(round((now - newest).total_seconds(), 3))
    return meta


@dg.sensor(
    name="raw_prices_observation_sensor",
    description="Reports new commits of the `raw_prices` Delta table (table version as the data "
    "version, rows, newest ts, lag) as runless materializations.",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def raw_prices_observation_sensor(
    context: dg.SensorEvaluationContext, raw_data: RawDataResource
) -> dg.SensorResult | dg.SkipReason:
    previous = parse_cursor(context.cursor)
    table = open_table(raw_data.raw_dir)
    if table is None:
        return dg.SkipReason(f"no raw_prices table under {raw_data.raw_dir} yet")
    if previous is not None and table.version() == previous:
        return dg.SkipReason(f"raw_prices: no commit since version {previous}")
    new = new_commits(table, previous)
    cursor = dump_cursor(new.version)
    if not new.rows:
        reason = f"raw_prices version {new.version}: {new.commits} commit(s) without new rows"
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    metadata = observe(raw_data.raw_dir, table, new)
    context.log.info(
        f"raw_prices version {new.version}: {new.rows} new row(s) in {new.commits} commit(s)"
    )
    event = dg.AssetMaterialization(
        asset_key=RAW_PRICES_KEY,
        metadata=metadata,
        tags={"dagster/data_version": str(new.version)},
    )
    return dg.SensorResult(asset_events=[event], cursor=cursor)
