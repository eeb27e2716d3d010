"""Compaction of the raw dataset: exact, one file per closed hour, idempotent, reader-safe."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from marketflow_assets import compaction
from marketflow_assets.cli import main as cli_main
from marketflow_assets.raw_dataset import list_raw_files, read_window, retry_vanished
from marketflow_assets_tests.compaction_helpers import (
    COINS,
    T0,
    all_rows,
    files_per_hour,
    make_history,
    micros,
    write_batch,
)


def test_compaction_is_exact_one_file_per_closed_hour_and_idempotent(tmp_path):
    raw = tmp_path / "raw_prices"
    make_history(raw)
    before_rows = all_rows(raw)
    before_files = len(list_raw_files(raw))
    cutoff = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 01:00 is the "open" hour
    open_hour = {p.name for p in (raw / "date=2026-03-02").glob("part-*.parquet")}
    open_hour = {
        n for n in open_hour if compaction.name_ts_range(n)[0] >= micros(cutoff)
    }  # files entirely in the open hour

    report = compaction.compact(raw, before=cutoff)
    assert report.hours_compacted == 4
    assert all_rows(raw) == before_rows  # rows unchanged, none lost, none doubled
    per_hour = files_per_hour(raw)
    for hour in (T0 + timedelta(hours=h) for h in range(4)):
        assert len(per_hour[hour]) == 1 and per_hour[hour][0].startswith("cpart-"), hour
    # the open hour: its own files untouched, plus the open-hour rows of a spanning batch
    still = {n for n in per_hour[cutoff] if n.startswith("part-")}
    assert open_hour <= still
    assert len(list_raw_files(raw)) < before_files
    # on disk nothing superseded is left: a plain reader of the directory sees the same rows
    on_disk = pq.read_table(raw).drop(["date"])
    assert sorted(tuple(r.values()) for r in on_disk.to_pylist()) == before_rows
    assert not list(raw.rglob(".tmp-*"))

    again = compaction.compact(raw, before=cutoff)
    assert again.hours_compacted == 0 and again.files_in == 0
    assert all_rows(raw) == before_rows

    # late data for a closed hour, then a compaction of everything up to 02:00
    write_batch(raw, [T0 + timedelta(seconds=15)], 10_000, sink="def456")
    late_rows = all_rows(raw)
    assert len(late_rows) == len(before_rows) + len(COINS)
    report = compaction.compact(raw, before=cutoff + timedelta(hours=1))
    assert report.hours_compacted == 2  # 21:00 again (late file) and 01:00
    assert all_rows(raw) == late_rows
    assert all(len(v) == 1 for v in files_per_hour(raw).values())


def test_cli_compact(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw_prices"
    make_history(raw)
    rows = all_rows(raw)
    monkeypatch.setenv("MARKETFLOW_DATA_DIR", str(tmp_path))
    assert cli_main(["compact", "--before", "2026-03-02T00:30:00Z"]) == 0
    assert "compacted 3 hour(s) before 2026-03-02T00:00:00+00:00" in capsys.readouterr().out
    assert all_rows(raw) == rows
    assert cli_main(["compact", "--before", "yesterday"]) == 2


def test_interrupted_compaction_leaves_no_visible_trace(tmp_path, monkeypatch):
    """A crash after writing the compacted files but before the commit changes nothing."""
    raw = tmp_path / "raw_prices"
    make_history(raw)
    rows = all_rows(raw)

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr(compaction, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        compaction.compact(raw, before=T0 + timedelta(hours=2))
    assert all_rows(raw) == rows
    monkeypatch.undo()
    # an orphaned output (as after kill -9) is invisible and cleaned up by the next run
    folder = raw / "date=2026-03-01"
    orphan = folder / "cpart-2026030121-1-2-deadbeef.parquet"
    pq.write_table(pq.read_table(next(folder.glob("part-*.parquet"))), orphan)
    assert all_rows(raw) == rows
    compaction.compact(raw, before=T0 + timedelta(hours=2))
    assert not orphan.exists()
    assert all_rows(raw) == rows


def test_readers_never_see_duplicates_or_gaps_during_compaction(tmp_path):
    """Readers going through the listing module while compactions commit, round after round
    (each round adds polls, some late for an already compacted hour, then compacts twice)."""
    raw = tmp_path / "raw_prices"
    start, end = T0, T0 + timedelta(hours=3)
    write_batch(raw, [T0 + timedelta(seconds=30 * i) for i in range(4)], 0)
    counts: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def reader(expected: int, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                df = retry_vanished(lambda: read_window(raw, start, end))
                assert not df.duplicated(["id", "ts"]).any()
                counts.append((expected, len(df)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for round_ in range(10):
        polls = [T0 + timedelta(minutes=2 + round_ * 11 + k, seconds=7) for k in range(3)]
        write_batch(raw, polls, round_ + 1)
        expected = len(COINS) * (4 + 3 * (round_ + 1))
        stop = threading.Event()
        threads = [threading.Thread(target=reader, args=(expected, stop)) for _ in range(2)]
        for t in threads:
            t.start()
        compaction.compact(raw, before=end)
        compaction.compact(raw, before=end)
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    wrong = [(want, got) for want, got in counts if got != want]
    assert counts and not wrong, f"{len(wrong)} of {len(counts)} reads saw a wrong count: {wrong}"
