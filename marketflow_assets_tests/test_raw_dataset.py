"""The raw_prices table module: pinned snapshots, exactly-once appends, in-place upgrades."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from marketflow_assets import raw_dataset as rd
from marketflow_assets.schema import raw_arrow_schema
from marketflow_assets_tests.compaction_helpers import APP, COINS, T0, batch_table, write_batch


def test_a_snapshot_pins_one_version_and_prunes_by_date_and_statistics(tmp_path):
    raw = tmp_path / "raw_prices"
    assert rd.snapshot(raw).version is None and rd.snapshot(raw).files_all == []
    for i in range(12):  # 21:00 .. 23:30 on day one, then 00:00 .. 02:30 on day two
        write_batch(raw, [T0 + timedelta(minutes=30 * i)], i)
    pinned = rd.snapshot(raw)
    assert os.fspath(pinned) == str(raw) and rd.snapshot(pinned) is pinned
    hour = pinned.files(T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert sorted(f.min_ts for f in hour) == [T0 + timedelta(hours=1), T0 + timedelta(minutes=90)]
    assert all(f.rows == len(COINS) for f in hour)
    assert pinned.days() == [T0.date(), T0.date() + timedelta(days=1)]
    write_batch(raw, [T0 + timedelta(hours=1, minutes=5)], 12)  # after the pin
    assert len(pinned.read(T0, T0 + timedelta(hours=2))) == 4 * len(COINS)
    assert len(rd.read_window(raw, T0, T0 + timedelta(hours=2))) == 5 * len(COINS)
    assert rd.raw_time_range(pinned) == (T0, T0 + timedelta(hours=5, minutes=30))


def test_appends_are_exactly_once_per_batch_and_never_duplicate_a_key(tmp_path):
    raw = tmp_path / "raw_prices"
    first = rd.append_batch(raw, batch_table([T0]), APP, 0)
    assert (first.version, first.rows_written, first.duplicates) == (1, 3, 0)
    assert rd.append_batch(raw, batch_table([T0]), APP, 0).skipped  # replay of batch 0
    again = rd.append_batch(raw, batch_table([T0, T0 + timedelta(seconds=30)]), APP, 1)
    assert (again.rows_written, again.duplicates) == (3, 3)  # (id, ts) already in the table
    other = rd.append_batch(raw, batch_table([T0]), "another-query", 0)
    assert other.rows_written == 0 and not other.skipped
    assert rd.committed_batch(raw, APP) == 1 and rd.committed_batch(raw, "nobody") is None
    assert len(rd.snapshot(raw).read(T0, T0 + timedelta(hours=1))) == 6


def _legacy(raw, name: str, stamps: list[datetime], unit: str = "us", price: float = 1.0):
    """A plain hive-partitioned Parquet file as an older Marketflow (or another tool) wrote it."""
    folder = raw / f"date={stamps[0].date().isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": [c for _ in stamps for c in COINS],
            "symbol": [c[:3] for _ in stamps for c in COINS],
            "current_price": [price + k for k, _ in enumerate(stamps) for _ in COINS],
            "ts": pa.array(
                [pd.Timestamp(t) for t in stamps for _ in COINS], pa.timestamp(unit, tz="UTC")
            ),
        }
    )
    pq.write_table(table, folder / name)
    return folder / name


def test_a_plain_parquet_dataset_is_converted_in_place_on_first_use(tmp_path, caplog):
    raw = tmp_path / "raw_prices"
    day2 = T0 + timedelta(hours=3)
    live = _legacy(raw, "cpart-2026030121-1-2-aaaa.parquet", [T0, T0 + timedelta(minutes=1)])
    superseded = _legacy(raw, "part-abc-b0000000001-000-1-2.parquet", [T0], price=50.0)
    orphan = _legacy(raw, "cpart-2026030121-1-2-bbbb.parquet", [T0], price=70.0)  # not committed
    (live.parent / "_compaction.json").write_text(
        json.dumps({"version": 2, "files": [live.name], "superseded": [superseded.name]})
    )
    foreign = _legacy(raw, "data-from-pandas.parquet", [day2], unit="ns")  # nanosecond ts
    (raw / "_writer.lock").write_text("")
    with caplog.at_level(logging.WARNING, logger="marketflow_assets.raw_dataset"):
        snap = rd.snapshot(raw)
    assert "converted the plain Parquet dataset" in caplog.text
    assert snap.version == 0
    df = snap.read(T0, T0 + timedelta(days=1), ("id", "ts", "current_price"))
    assert len(df) == 3 * len(COINS) and not df.duplicated(["id", "ts"]).any()
    assert set(df["current_price"]) == {1.0, 2.0}  # neither the superseded nor the orphan rows
    assert set(df["ts"]) == {pd.Timestamp(t) for t in (T0, T0 + timedelta(minutes=1), day2)}
    for old in (live, superseded, orphan, foreign, raw / "_writer.lock"):
        assert not old.exists()
    assert not (raw / rd.CONVERSION_MARKER).exists()
    assert DeltaTable(str(raw)).history(1)[0][rd.OPERATION_KEY] == "convert"
    assert rd.snapshot(raw).version == 0  # converted once


def test_a_conversion_interrupted_before_or_after_its_commit_resumes(tmp_path, monkeypatch):
    raw = tmp_path / "raw_prices"
    _legacy(raw, "part-1.parquet", [T0, T0 + timedelta(seconds=30)])
    _legacy(raw, "part-2.parquet", [T0 + timedelta(minutes=5)])

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr("deltalake.write_deltalake", killed)
    with pytest.raises(KeyboardInterrupt):
        rd.snapshot(raw)
    monkeypatch.undo()
    assert (raw / rd.CONVERSION_MARKER).exists() and not rd.is_table(raw)
    snap = rd.snapshot(raw)  # resumes from the marker
    assert snap.row_count() == 3 * len(COINS)

    # killed after the commit, before the old files were deleted: only the deletion is redone
    old = _legacy(raw, "part-1.parquet", [T0, T0 + timedelta(seconds=30)])
    (raw / rd.CONVERSION_MARKER).write_text(
        json.dumps(
            {
                "visible": ["date=2026-03-01/part-1.parquet"],
                "remove": ["date=2026-03-01/part-1.parquet"],
            }
        )
    )
    again = rd.snapshot(raw)
    assert again.version == snap.version and again.row_count() == 3 * len(COINS)
    assert not old.exists() and not (raw / rd.CONVERSION_MARKER).exists()


def test_the_raw_retention_setting(monkeypatch):
    from marketflow_assets.settings import ConfigError, load_raw_retention_hours

    assert load_raw_retention_hours({}) == 6.0
    assert load_raw_retention_hours({"MARKETFLOW_RAW_RETENTION_HOURS": "1.5"}) == 1.5
    with pytest.raises(ConfigError, match="at least 1 hour"):
        load_raw_retention_hours({"MARKETFLOW_RAW_RETENTION_HOURS": "0.5"})
    with pytest.raises(ConfigError, match="not a number"):
        load_raw_retention_hours({"MARKETFLOW_RAW_RETENTION_HOURS": "soon"})
    config = rd.table_configuration(6)
    assert config["delta.deletedFileRetentionDuration"] == "interval 360 minutes"


def test_the_table_schema_is_the_raw_schema_plus_the_date_partition(tmp_path):
    raw = tmp_path / "raw_prices"
    write_batch(raw, [T0], 0)
    table = DeltaTable(str(raw))
    assert table.metadata().partition_columns == ["date"]
    names = [f.name for f in table.schema().fields]
    assert names == [*raw_arrow_schema().names, "date"]
    assert datetime(2026, 3, 1, tzinfo=UTC).date() in rd.snapshot(raw).days()


def test_a_changed_retention_setting_reaches_the_table_at_the_next_compaction(
    tmp_path, monkeypatch
):
    from marketflow_assets import compaction

    raw = tmp_path / "raw_prices"
    write_batch(raw, [T0], 0)
    config = DeltaTable(str(raw)).metadata().configuration
    assert config["delta.deletedFileRetentionDuration"] == "interval 360 minutes"
    assert config["delta.logRetentionDuration"] == rd.LOG_RETENTION
    monkeypatch.setenv("MARKETFLOW_RAW_RETENTION_HOURS", "2")
    compaction.compact(raw)
    config = DeltaTable(str(raw)).metadata().configuration
    assert config["delta.deletedFileRetentionDuration"] == "interval 120 minutes"
