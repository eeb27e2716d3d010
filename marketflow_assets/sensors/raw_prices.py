"""Observation sensor for ``raw_prices``: reports what the Spark streaming job added.

Every tick lists the dataset's visible Parquet files and compares them with the cursor (the newest
file modification time seen plus the names seen within a grace period before it, so files renamed
into place slightly out of order are not missed). New files produce one runless
``AssetMaterialization`` of ``raw_prices`` whose metadata the UI plots over time: new files and
rows, the new data's time range, the newest ``ts`` and its lag behind the wall clock. The
automation sensor reacts to these events.
"""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from marketflow_assets.assets.raw_prices import RAW_PRICES_KEY
from marketflow_assets.raw_dataset import RawFile, file_rows, file_ts_range, list_raw_files
from marketflow_assets.resources.raw_data import RawDataResource

GRACE_NS = 120 * 1_000_000_000


@dataclass
class RawCursor:
    mtime_ns: int = 0
    recent: list[str] = field(default_factory=list)  # files with mtime in the grace window

    @classmethod
    def parse(cls, text: str | None) -> "RawCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(int(data.get("mtime_ns", 0)), list(data.get("recent", [])))

    def dump(self) -> str:
        return json.dumps({"mtime_ns": self.mtime_ns, "recent": self.recent})


def new_raw_files(raw_dir: Path, cursor: RawCursor) -> tuple[list[RawFile], RawCursor]:
    """Files not reported yet, and the cursor after reporting them."""
    files = list_raw_files(raw_dir)
    known = set(cursor.recent)
    floor = cursor.mtime_ns - GRACE_NS
    new = [
        f
        for f in files
        if f.mtime_ns > cursor.mtime_ns or (f.mtime_ns >= floor and str(f.path) not in known)
    ]
    newest = max([cursor.mtime_ns, *(f.mtime_ns for f in files)])
    recent = [str(f.path) for f in files if f.mtime_ns >= newest - GRACE_NS]
    return new, RawCursor(newest, sorted(recent))


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
    new, next_cursor = new_raw_files(raw_data.raw_dir, cursor)
    if not new:
        return dg.SkipReason(f"no new raw Parquet files under {raw_data.raw_dir}")
    metadata = observe(raw_data.raw_dir, new)
    context.log.info(f"raw_prices: {len(new)} new file(s), {metadata['new_rows'].value} rows")
    return dg.SensorResult(
        asset_events=[dg.AssetMaterialization(asset_key=RAW_PRICES_KEY, metadata=metadata)],
        cursor=next_cursor.dump(),
    )
