"""Observation sensor for ``raw_prices``: reports what the Spark streaming job added.

Each tick costs the same however long the history is: the sensor works from its cursor and
looks only at the newest ``date=`` partitions, never at the whole dataset.

* The cursor holds the newest file modification time reported, the names reported within a grace
  period before it (files renamed into place slightly out of order are not missed), the raw
  root's mtime and the watched ``date=`` directories with their mtimes.
* A tick stats the root: only when its mtime changed (a ``date=`` directory was created, about
  once a day) does it list the root, to pick the watched directories again: the newest
  ``WATCH_DAYS`` dates plus any directory modified since the cursor (a replay of old data).
* It then stats each watched directory and lists only those whose mtime moved (a directory whose
  mtime is younger than a second is listed anyway, for coarse file-system clocks).

Compacted files (``cpart-...``, see :mod:`marketflow_assets.compaction`) are rewrites of rows
already reported, so they are not reported again. Files landing in a ``date=`` directory older
than the watched ones (late data for a past day) are left to ``marketflow refresh`` / backfills.

New files produce one runless ``AssetMaterialization`` of ``raw_prices`` whose metadata the UI
plots over time: new files and rows, the new data's time range, the newest ``ts`` and its lag
behind the wall clock. The automation sensor reacts to these events.
"""

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg

from marketflow_assets.defs.raw_prices.assets import RAW_PRICES_KEY
from marketflow_assets.raw_dataset import (
    PARTITION_PREFIX,
    RawFile,
    file_rows,
    file_ts_range,
    from_micros,
    is_compacted,
    name_ts_range,
    visible_names,
)
from marketflow_assets.resources.raw_data import RawDataResource

GRACE_NS = 120 * 1_000_000_000
#: Newest ``date=`` directories watched on every tick (today and yesterday around midnight).
WATCH_DAYS = 2
#: A directory modified less than this ago is listed even if its mtime equals the cursor's.
SETTLE_NS = 1_000_000_000


@dataclass
class RawCursor:
    mtime_ns: int = 0
    recent: list[str] = field(default_factory=list)  # files with mtime in the grace window
    root_mtime_ns: int = 0
    watch: dict[str, int] = field(default_factory=dict)  # date -> directory mtime when listed

    @classmethod
    def parse(cls, text: str | None) -> "RawCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            int(data.get("mtime_ns", 0)),
            list(data.get("recent", [])),
            int(data.get("root_mtime_ns", 0)),
            {str(k): int(v) for k, v in data.get("watch", {}).items()},
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "mtime_ns": self.mtime_ns,
                "recent": self.recent,
                "root_mtime_ns": self.root_mtime_ns,
                "watch": self.watch,
            },
            sort_keys=True,
        )


@dataclass
class ScanStats:
    """What one tick looked at (the cost the sensor pays; tested to be independent of history)."""

    root_listed: int = 0  # listings of the raw root (only when a date= directory appeared)
    dirs_statted: int = 0
    dirs_listed: int = 0
    entries_listed: int = 0  # names returned by the directory listings
    files_statted: int = 0


def _mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def _watched_dates(raw_dir: Path, cursor: RawCursor, nxt: RawCursor, stats: ScanStats) -> list[str]:
    """Dates to look at: the cursor's, or (root changed) the newest + recently modified ones."""
    root_mtime = _mtime(raw_dir)
    stats.dirs_statted += 1
    if root_mtime is None:
        return []
    if root_mtime == cursor.root_mtime_ns and cursor.watch:
        return sorted(cursor.watch)
    stats.root_listed += 1
    dates = []
    with os.scandir(raw_dir) as entries:
        for entry in entries:
            stats.entries_listed += 1
            if entry.name.startswith(PARTITION_PREFIX) and entry.is_dir():
                day = entry.name[len(PARTITION_PREFIX) :]
                try:
                    date.fromisoformat(day)
                except ValueError:
                    continue
                dates.append((day, entry.stat().st_mtime_ns))
    dates.sort()
    newest = {d for d, _ in dates[-WATCH_DAYS:]}
    if cursor.watch:  # a replay of old data can create an older date directory
        newest |= {d for d, m in dates if m >= cursor.mtime_ns - GRACE_NS}
    nxt.root_mtime_ns = root_mtime
    return sorted(newest)


def new_raw_files(
    raw_dir: Path, cursor: RawCursor, now_ns: int | None = None
) -> tuple[list[RawFile], RawCursor, ScanStats]:
    """Files not reported yet, the cursor after reporting them, and what the scan cost."""
    raw_dir = Path(raw_dir)
    now_ns = time.time_ns() if now_ns is None else now_ns
    stats = ScanStats()
    nxt = RawCursor(cursor.mtime_ns, list(cursor.recent), cursor.root_mtime_ns, {})
    files: list[RawFile] = []
    listed: set[str] = set()
    for day in _watched_dates(raw_dir, cursor, nxt, stats):
        folder = raw_dir / f"{PARTITION_PREFIX}{day}"
        dir_mtime = _mtime(folder)
        stats.dirs_statted += 1
        if dir_mtime is None:
            continue
        nxt.watch[day] = dir_mtime
        settled = now_ns - dir_mtime > SETTLE_NS
        if cursor.watch.get(day) == dir_mtime and settled:
            continue  # nothing was added, renamed or removed in this directory
        stats.dirs_listed += 1
        listed.add(str(folder))
        names = visible_names(folder)
        stats.entries_listed += len(names)
        for name in names:
            if is_compacted(name):
                continue
            try:
                st = os.stat(folder / name)
            except FileNotFoundError:
                continue
            stats.files_statted += 1
            rng = name_ts_range(name)
            lo, hi = (from_micros(rng[0]), from_micros(rng[1])) if rng else (None, None)
            files.append(
                RawFile(folder / name, date.fromisoformat(day), lo, hi, st.st_mtime_ns, st.st_size)
            )
    known = set(cursor.recent)
    floor = cursor.mtime_ns - GRACE_NS
    new = [
        f
        for f in files
        if f.mtime_ns > cursor.mtime_ns or (f.mtime_ns >= floor and str(f.path) not in known)
    ]
    newest = max([cursor.mtime_ns, *(f.mtime_ns for f in files)])
    recent = {str(f.path) for f in files if f.mtime_ns >= newest - GRACE_NS}
    # names reported in the grace window stay known while their directory is not listed again
    # (a listed directory's names are all in ``files``; removed or compacted ones drop out)
    recent |= {p for p in cursor.recent if str(Path(p).parent) not in listed}
    nxt.mtime_ns = newest
    nxt.recent = sorted(recent)
    return sorted(new, key=lambda f: str(f.path)), nxt, stats


def observe(raw_dir: Path, new: list[RawFile], now: datetime | None = None) -> dict:
    """Metadata describing the new files (and the dataset as a whole)."""
    now = now or datetime.now(UTC)
    ranges = [r for r in (file_ts_range(f) for f in new) if r is not None]
    meta: dict = {
        "new_files": dg.MetadataValue.int(len(new)),
        "new_rows": dg.MetadataValue.int(sum(file_rows(f.path) for f in new)),
        "new_bytes": dg.MetadataValue.int(sum(f.size for f in new)),
        "dates": dg.MetadataValue.text(", ".join(sorted({f.day.isoformat() for f in new}))),
        "path": dg.MetadataValue.path(str(raw_dir)),
    }
    if ranges:
        oldest = min(r[0] for r in ranges)
        newest = max(r[1] for r in ranges)
        meta["oldest_new_ts"] = dg.MetadataValue.timestamp(oldest)
        meta["newest_ts"] = dg.MetadataValue.timestamp(newest)
        meta["lag_seconds"] = dg.MetadataValue.float(round((now - newest).total_seconds(), 3))
    return meta


@dg.sensor(
    name="raw_prices_observation_sensor",
    description="Reports new raw Parquet files of `raw_prices` (rows, newest ts, lag) as runless "
    "materializations.",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def raw_prices_observation_sensor(
    context: dg.SensorEvaluationContext, raw_data: RawDataResource
) -> dg.SensorResult | dg.SkipReason:
    cursor = RawCursor.parse(context.cursor)
    new, next_cursor, _stats = new_raw_files(raw_data.raw_dir, cursor)
    if not new:
        reason = f"no new raw Parquet files under {raw_data.raw_dir}"
        if next_cursor.dump() == cursor.dump():
            return dg.SkipReason(reason)
        return dg.SensorResult(skip_reason=reason, cursor=next_cursor.dump())
    metadata = observe(raw_data.raw_dir, new)
    context.log.info(f"raw_prices: {len(new)} new file(s), {metadata['new_rows'].value} rows")
    return dg.SensorResult(
        asset_events=[dg.AssetMaterialization(asset_key=RAW_PRICES_KEY, metadata=metadata)],
        cursor=next_cursor.dump(),
    )
