"""The incremental refresh's plan (``defs/indicators/incremental.py``), from real raw-table files
and ledger rows: every reason a refresh recomputes the whole hour, appends, recomputes from a late
row, or does nothing; and where ``market_movers`` must start again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from marketflow_assets.defs.indicators.incremental import (
    file_names,
    hours,
    plan_indicators,
    plan_movers,
)
from marketflow_assets.raw_dataset import snapshot
from marketflow_assets.resources.refresh_ledger import LedgerRow
from marketflow_assets_tests.helpers import write_raw_parquet

START = datetime(2024, 5, 1, 12, tzinfo=UTC)


def _poll(minute: float, coins=("bitcoin", "ethereum")) -> list[tuple]:
    ts = START + timedelta(minutes=minute)
    return [(c, c[:3], ts, 100.0 + i) for i, c in enumerate(coins)]


def _files(raw_dir):
    return sorted(snapshot(raw_dir).files_all, key=lambda f: f.path)


def _ledger(raw_dir, files, newest) -> LedgerRow:
    return LedgerRow(START, frozenset(file_names(raw_dir, files)), newest, None, None)


def test_every_reason_for_a_plan(tmp_path):
    raw = tmp_path / "raw_prices"
    write_raw_parquet(raw, _poll(1) + _poll(2))
    first = _files(raw)
    stored_newest = START + timedelta(minutes=2)

    plan = plan_indicators(raw, START, first, None, None)
    assert (plan.recompute_from, plan.full) == (START, True) and "first refresh" in plan.reason

    invalidated = LedgerRow(START, None, stored_newest, None, None)
    assert "earlier hour changed" in plan_indicators(raw, START, first, invalidated, None).reason

    ledger = _ledger(raw, first, stored_newest)
    plan = plan_indicators(raw, START, first, ledger, stored_newest)
    assert (plan.recompute_from, plan.full) == (None, False)
    assert plan.reason == "unchanged: no new raw file"

    outside = plan_indicators(raw, START, first, ledger, stored_newest + timedelta(seconds=1))
    assert outside.full and "changed outside the refresh" in outside.reason

    # a new poll after everything stored: append from its first ts
    write_raw_parquet(raw, _poll(3))
    plan = plan_indicators(raw, START, _files(raw), ledger, stored_newest)
    assert plan.recompute_from == START + timedelta(minutes=3) and not plan.full
    assert plan.reason.startswith("append: 1 new file(s)")

    # a late poll, older than the newest stored row: recompute from the late row
    write_raw_parquet(raw, _poll(1.5, coins=("solana",)))
    plan = plan_indicators(raw, START, _files(raw), ledger, stored_newest)
    assert plan.recompute_from == START + timedelta(minutes=1.5)
    assert plan.reason.startswith("late: 2 new file(s)")

    # rows in the lookback (before the hour): the whole hour again
    write_raw_parquet(raw, _poll(-3))
    plan = plan_indicators(raw, START, _files(raw), ledger, stored_newest)
    assert plan.full and "lookback" in plan.reason

    # a file the ledger knows is gone (a compaction replaced it): the whole hour again
    plan = plan_indicators(raw, START, _files(raw)[1:], _ledger(raw, _files(raw), None), None)
    assert plan.full and "replaced or removed" in plan.reason


def test_movers_plan_and_hours():
    newest = START + timedelta(minutes=30)
    assert plan_movers(START, None, None) == START  # never refreshed
    up_to_date = LedgerRow(START, frozenset(), None, None, newest)
    assert plan_movers(START, up_to_date, newest) is None
    assert plan_movers(START, up_to_date, newest + timedelta(seconds=30)) == START  # changed
    pending = LedgerRow(START, frozenset(), None, START + timedelta(minutes=20), newest)
    assert plan_movers(START, pending, newest) == START + timedelta(minutes=20)
    early = LedgerRow(START, frozenset(), None, START - timedelta(hours=2), newest)
    assert plan_movers(START, early, newest) == START  # never before the hour

    assert hours(START, START) == []
    assert hours(START, START + timedelta(minutes=150)) == [
        START,
        START + timedelta(hours=1),
        START + timedelta(hours=2),
    ]
