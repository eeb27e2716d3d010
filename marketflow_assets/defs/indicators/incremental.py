"""Incremental refresh *within* an hourly partition: recompute only what new raw rows affect.

Each hourly partition has a row in the ledger table (``schema.REFRESH_LEDGER_TABLE``, SQL in
:mod:`marketflow_assets.resources.refresh_ledger`) naming the raw files already folded into
``price_indicators`` (why: ``docs/DECISIONS.md``). A refresh of hour ``[h, h + 1 h)``:

1. lists the hour's raw files (names only; the streaming job's names carry each file's min/max
   ``ts``) and compares them with the ledger (:func:`plan_indicators`);
2. no new file -> nothing to compute or write;
3. new files -> ``from`` = the oldest ``ts`` in them (file name, else Parquet statistics). The
   rows of ``[from, h + 1 h)`` are recomputed exactly as a partition refresh would compute them:
   raw rows in ``[from - 300 s, h + 1 h)`` (the lookback, read from the files overlapping it)
   and, per coin, the stored state before ``from`` (last row before ``from - 300 s`` for the %
   changes, last ``(ts, ema_3min)`` before ``from`` for the EMA) — see
   :mod:`marketflow_assets.indicators`. In the live case ``from`` is the new poll, so the cost
   is one poll plus 5 minutes of lookback whatever the hour already holds. A late or replayed
   row (older than what the table holds) moves ``from`` back to it, so every row it affects is
   recomputed and rewritten (``replace_period`` deletes changed rows, inserts new ones);
4. the whole hour is recomputed when there is no ledger row yet, a file the ledger lists has
   gone (replaced by a compaction or a replayed micro-batch), the table's newest ``ts`` in the
   hour is not the one the ledger recorded (rows deleted or truncated behind its back), new rows
   fall into the lookback before ``h``, or an earlier hour changed (its EMA/price state flows
   into this hour: such a write invalidates every later partition's ledger row).

The ledger row is written in the same transaction as the rows (``after_write``), so a crash
leaves either both or neither. ``market_movers`` depends per snapshot only on that snapshot's
indicators: every indicator write that changed rows records the oldest changed time
(``movers_from``) and the movers refresh recomputes ``[movers_from, h + 1 h)`` only
(:func:`plan_movers`). Refreshes hold one advisory lock (plan, compute, write), so concurrent
runs (the live follower, the automation sensor, the schedule, a backfill) serialise instead of
planning from a ledger another run is about to change. An incremental refresh equals a full
recompute to 1e-9 (``test_indicator_assets.py``, ``test_indicators.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from marketflow_assets.defs.indicators.compute import raw_window_files
from marketflow_assets.raw_dataset import RawFile, file_ts_range
from marketflow_assets.resources import refresh_ledger as ledger_sql
from marketflow_assets.resources.refresh_ledger import LedgerRow

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Plan:
    """What a refresh of one hour has to do."""

    recompute_from: datetime | None  # None: nothing new since the last refresh
    reason: str

    @property
    def full(self) -> bool:
        return self.reason.startswith("full")


def file_names(raw_dir: Path, files: list[RawFile]) -> list[str]:
    """Names of ``files`` relative to the dataset root (``date=YYYY-MM-DD/part-....parquet``)."""
    root = Path(raw_dir)
    return sorted(f.path.relative_to(root).as_posix() for f in files)


def plan_indicators(
    raw_dir: Path,
    start: datetime,
    files: list[RawFile],
    ledger: LedgerRow | None,
    stored_newest: datetime | None,
) -> Plan:
    """Plan the refresh of the hour starting at ``start`` (see the module docstring).

    ``files``: the raw files of the hour's window (``raw_window_files``, lookback included);
    ``ledger``: the hour's ledger row; ``stored_newest``: the newest ``ts`` the table holds in
    the hour now.
    """
    if ledger is None:
        return Plan(start, "full: first refresh of this hour")
    if ledger.raw_files is None:
        return Plan(start, "full: an earlier hour changed (state flows into this one)")
    if stored_newest != ledger.indicators_newest_ts:
        return Plan(start, "full: the table's rows of this hour changed outside the refresh")
    names = dict(zip(file_names(raw_dir, files), files, strict=True))
    if set(ledger.raw_files) - set(names):
        return Plan(start, "full: raw files of this hour were replaced or removed")
    new = [names[name] for name in sorted(set(names) - set(ledger.raw_files))]
    if not new:
        return Plan(None, "unchanged: no new raw file")
    ranges = [file_ts_range(f) for f in new]
    oldest = min((r[0] for r in ranges if r is not None), default=None)
    if oldest is None:  # unreadable or empty new files: recompute rather than guess
        return Plan(start, "full: new raw files without a readable time range")
    if oldest <= start:
        return Plan(start, "full: new rows in the hour's lookback or at its start")
    if stored_newest is not None and oldest <= stored_newest:
        return Plan(oldest, f"late: {len(new)} new file(s) from {oldest.isoformat()}")
    return Plan(oldest, f"append: {len(new)} new file(s) from {oldest.isoformat()}")


def plan_movers(
    start: datetime, ledger: LedgerRow | None, stored_newest: datetime | None
) -> datetime | None:
    """Where ``market_movers`` of the hour starting at ``start`` must be recomputed from (None:
    up to date)."""
    if ledger is None or stored_newest != ledger.movers_newest_ts:
        return start
    if ledger.movers_from is None:
        return None
    return max(start, ledger.movers_from)


def hours(start: datetime, end: datetime) -> list[datetime]:
    out, hour = [], start
    while hour < end:
        out.append(hour)
        hour += HOUR
    return out


@dataclass
class Step:
    """One computation of :func:`refresh_indicators_window`: rows of ``[start, end)``."""

    start: datetime
    end: datetime
    reason: str


def refresh_indicators_window(
    postgres,
    raw_dir: Path,
    start: datetime,
    end: datetime,
    compute: Callable[[datetime, datetime, Callable], object],
    forced: str | None = None,
) -> list[tuple[Step, object]]:
    """Bring ``price_indicators`` up to date for the hourly partitions in ``[start, end)``;
    with ``forced`` (why: a run launched by hand), recompute the whole window regardless.

    Hours are planned in time order. An incremental hour calls ``compute(from, hour_end,
    after_write)``; the first hour that needs a full recompute is computed together with every
    later hour of the window in one call ``compute(hour, end, after_write)`` (that is what a
    backfill does, on Spark when large). ``compute`` must write its rows with
    ``replace_period(..., after_write=after_write)``. Returns the steps taken with ``compute``'s
    results (an unchanged hour has a step with result None).
    """
    postgres.ensure_tables()
    steps: list[tuple[Step, object]] = []
    with ledger_sql.refresh_lock(postgres.resolved_url()):
        for hour in hours(start, end):
            hour_end = hour + HOUR
            files = raw_window_files(raw_dir, hour, hour_end)
            with postgres.get_connection() as conn, conn.cursor() as cur:
                row = ledger_sql.read(cur, hour)
                stored = ledger_sql.newest_ts(cur, "price_indicators", "ts", hour, hour_end)
            plan = (
                Plan(hour, f"full: {forced}")
                if forced
                else plan_indicators(raw_dir, hour, files, row, stored)
            )
            if plan.recompute_from is None:
                steps.append((Step(hour, hour, plan.reason), None))
                continue
            stop = end if plan.full else hour_end
            listing = {
                h: file_names(raw_dir, raw_window_files(raw_dir, h, h + HOUR))
                for h in hours(hour, stop)
            }
            listing[hour] = file_names(raw_dir, files)

            def after_write(cur, changed: int, listing=listing, frm=plan.recompute_from, stop=stop):
                for h, names in listing.items():
                    ledger_sql.record_indicators(cur, h, h + HOUR, names, changed > 0, max(h, frm))
                if changed:
                    ledger_sql.invalidate_from(cur, stop)

            step = Step(plan.recompute_from, stop, plan.reason)
            steps.append((step, compute(plan.recompute_from, stop, after_write)))
            if plan.full:
                break
    return steps


def refresh_movers_window(
    postgres,
    start: datetime,
    end: datetime,
    compute: Callable[[datetime, datetime, Callable], object],
    forced: str | None = None,
) -> tuple[Step, object]:
    """Bring ``market_movers`` up to date for the hourly partitions in ``[start, end)``: one
    ``compute(from, end, after_write)`` from the oldest pending point (nothing when none); with
    ``forced`` (why), from ``start`` regardless."""
    postgres.ensure_tables()
    with ledger_sql.refresh_lock(postgres.resolved_url()):
        points = []
        with postgres.get_connection() as conn, conn.cursor() as cur:
            for hour in hours(start, end):
                row = ledger_sql.read(cur, hour)
                stored = ledger_sql.newest_ts(
                    cur, "market_movers", "snapshot_ts", hour, hour + HOUR
                )
                point = hour if forced else plan_movers(hour, row, stored)
                if point is not None:
                    points.append(point)
        if not points:
            return Step(end, end, "unchanged: price_indicators did not change"), None
        frm = min(points)

        def after_write(cur, changed: int) -> None:  # noqa: ARG001 - always recorded
            for hour in hours(start, end):
                ledger_sql.record_movers(cur, hour, hour + HOUR)

        reason = f"full: {forced}" if forced else "full" if frm == start else f"from {frm}"
        return Step(frm, end, reason), compute(frm, end, after_write)
