"""Reconciliation of ``price_indicators`` with the raw dataset: rows per hour on both sides.

Every raw observation (distinct ``(id, ts)`` with a ``ts`` and a non-NULL ``current_price``,
``ts`` in microseconds as the refresh reads it) becomes exactly one ``price_indicators`` row, so
per hour the two counts are equal once the hour was refreshed. An hour whose counts differ holds
raw rows that never reached PostgreSQL - typically late data that landed in a ``date=`` directory
older than the one the sensors watch - or table rows without raw data behind them.

Plain functions only (no Dagster): :func:`raw_rows_per_hour` (per day, from one pinned version
of the ``raw_prices`` table), :func:`indicator_rows_per_hour` (one ``GROUP BY`` over the
primary key) and :func:`differing_hours`. The ``price_indicators_reconciled`` check
(``defs/indicators/reconciliation_checks.py``) compares every hour; the
``reconciliation_sensor`` (``defs/indicators/reconciliation_sensor.py``) compares the days whose
raw files changed and requests the runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pandas as pd

from marketflow_assets.raw_dataset import RawSnapshot, read_files, retry_vanished, snapshot

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: Hours ending less than this before "now" are not compared: the live refresh is still
#: folding their newest raw rows in (a few seconds normally).
SETTLE = timedelta(seconds=120)


@dataclass(frozen=True)
class HourDiff:
    """One hour whose raw rows and ``price_indicators`` rows differ in number."""

    hour: datetime
    raw_rows: int
    indicator_rows: int

    def describe(self) -> str:
        return (
            f"{self.hour:%Y-%m-%d %H:00} UTC: raw {self.raw_rows}, indicators {self.indicator_rows}"
        )


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def day_signature(raw: Path | RawSnapshot, day: date) -> str:
    """Changes whenever a data file of the day is added or removed in the table (a hash of the
    day's file paths in the pinned version: a commit adding rows or a compaction counts)."""
    paths = sorted(str(f.path) for f in snapshot(raw).files_all if f.day == day)
    if not paths:
        return "absent"
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()[:16]


def _hour_counts(frame: pd.DataFrame) -> dict[datetime, int]:
    if not len(frame):
        return {}
    frame = frame[frame["ts"].notna() & frame["current_price"].notna()]
    ts = pd.to_datetime(frame["ts"], utc=True).dt.floor("us")
    keys = pd.DataFrame({"id": frame["id"].to_numpy(), "ts": ts.to_numpy()}).drop_duplicates()
    hours = pd.to_datetime(keys["ts"], utc=True).dt.floor("h")
    return {h.to_pydatetime(): int(n) for h, n in hours.value_counts().items()}


def raw_rows_per_hour(
    raw: Path | RawSnapshot, days: Iterable[date] | None = None
) -> dict[datetime, int]:
    """Distinct raw observations per UTC hour, for the given days (default: all), of ONE
    pinned table version (``raw`` may already be a snapshot).

    Reads only ``id``, ``ts`` and ``current_price``, one day at a time."""

    def count() -> dict[datetime, int]:
        snap = snapshot(raw)
        counts: dict[datetime, int] = {}
        for day in sorted(set(snap.days() if days is None else days)):
            start = day_start(day)
            files = snap.files(start, start + DAY)
            frame = read_files(
                [f.path for f in files], ("id", "ts", "current_price"), start, start + DAY
            )
            for hour, n in _hour_counts(frame).items():
                counts[hour] = counts.get(hour, 0) + n
        return counts

    return retry_vanished(count)


def indicator_rows_per_hour(
    conn, start: datetime | None = None, end: datetime | None = None
) -> dict[datetime, int]:
    """``price_indicators`` rows per UTC hour with ``ts`` in ``[start, end)`` (default: all);
    empty when the table does not exist."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('price_indicators') IS NOT NULL")
        if not cur.fetchone()[0]:
            return {}
        where, params = [], []
        if start is not None:
            where.append("ts >= %s")
            params.append(start)
        if end is not None:
            where.append("ts < %s")
            params.append(end)
        cur.execute(
            "SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AS hour, count(*) "
            f"FROM price_indicators {'WHERE ' + ' AND '.join(where) if where else ''} "
            "GROUP BY 1 ORDER BY 1",
            params,
        )
        return {row[0].replace(tzinfo=UTC): int(row[1]) for row in cur.fetchall()}


def differing_hours(
    raw: dict[datetime, int],
    stored: dict[datetime, int],
    settled_before: datetime | None = None,
) -> list[HourDiff]:
    """Hours (oldest first) whose counts differ; hours ending after ``settled_before`` are left
    out (still being refreshed)."""
    out = []
    for hour in sorted(set(raw) | set(stored)):
        if settled_before is not None and hour + HOUR > settled_before:
            continue
        if raw.get(hour, 0) != stored.get(hour, 0):
            out.append(HourDiff(hour, raw.get(hour, 0), stored.get(hour, 0)))
    return out


def settled_before(now: datetime | None = None) -> datetime:
    """Hours ending after this instant are not compared yet (see :data:`SETTLE`)."""
    return (now or datetime.now(UTC)) - SETTLE
