"""Costs that must not grow with history: a sensor tick, the live refresh, a commit.

Two ``raw_prices`` Delta tables ending at the same instant (:data:`END`, the open hour starts
there), ``COINS`` coins polled every 30 s (:mod:`benchmarks.data`), built once and cached under
``$MARKETFLOW_BENCH_DIR/costs/v<VERSION>_...`` (``_COMPLETE`` holds how long the build took and
the table's figures). ``30d`` holds 720 hours (31 date partitions), ``1h`` the last hour only.

How the 30-day table is built (state = what 30 days of the streaming job, one commit per poll,
plus the hourly compaction job leave; replaying all 86,400 polls would take about an hour):

* **Settled days** -- the hours before the last ``REPLAY_HOURS`` (12): what compaction leaves of
  them is ONE file per date partition (OPTIMIZE's output, rows in commit order, 32 k-row row
  groups) referenced from the checkpoint, and no commit file. They are appended with
  ``raw_dataset.append_batch`` as one commit per date, so the table holds the same files; their
  commit files expire from the log with the first replayed hours (below).
* **The last 12 hours** (``REPLAY_HOURS``: END's date partition since midnight, the only one
  still written; twice the VACUUM retention, 12 times the log retention): replayed as the
  pipeline runs them -- one ``append_batch`` per poll with the streaming job's application
  transaction ``(app id, batch id)`` and its (id, ts) dedup (a checkpoint every 100 commits by
  delta-rs' post-commit hook, which also removes expired commit files), and
  :func:`marketflow_assets.compaction.compact` at every hour boundary (OPTIMIZE + VACUUM +
  checkpoint + ``cleanup_metadata``). 1,440 poll commits and 12 compactions.
* **Time is fast-forwarded, so the retentions are scaled to it.** An hour is replayed in
  seconds, but delta-rs expires by the wall clock: a checkpoint keeps the tombstones (``remove``
  actions) younger than ``delta.deletedFileRetentionDuration``, and the log cleanup removes the
  commit files (by file mtime) before the newest checkpoint older than
  ``delta.logRetentionDuration``. Unscaled, nothing would expire during the build (the previous
  build's checkpoint held ~5,500 tombstones instead of ~730, its log ~6,000 files). So
  :class:`_BuildClock` records the wall time at which the build reached each simulated hour, and
  at every hour boundary ``h`` both properties are set (by ``compact()`` itself, which applies
  the properties it finds differing from ``table_configuration()``: the benchmark hands it the
  scaled ones with ``mock.patch``) to ``now - wall(h - retention)`` in milliseconds, i.e. the
  real ``table_configuration()`` with "6 simulated hours" and "1 simulated hour" expressed on
  the build's clock. The per-poll checkpoints in between use the latest scaled values (the build
  runs at a nearly constant pace, so they stay about one simulated hour / six simulated hours).
  After the last hour a VACUUM with the scaled retention deletes the data files the hourly
  VACUUM would have deleted by END (``compact()``'s own VACUUM takes whole wall hours, so it
  deletes nothing during the build); then the real properties
  (``raw_dataset.table_configuration(MARKETFLOW_RAW_RETENTION_HOURS)``) are restored and one
  real ``compact()`` runs (checkpoint, log cleanup: nothing more expires, since the whole build
  is younger than an hour of wall time). The log then holds what a live table's holds: the
  commits since the newest checkpoint older than one (simulated) hour, ~1-2 h of polls, and the
  checkpoint ~6 h of tombstones. ``_COMPLETE`` records both counts.
* ``1h``: a fresh table with the one hour replayed the same way (120 commits, one compaction;
  nothing expires).

Each benchmark run works on a copy (data files hard-linked, ``_delta_log`` copied with its
file times shifted so the newest commit is "now": a cache days old is not log-cleaned at the
first checkpoint of the run).

* ``observe``: ``raw_prices_observation_sensor`` evaluated through ``dg.build_sensor_context``
  with its real cursor (``{"version": v}``). Each timed tick follows one new micro-batch commit
  (one poll of all coins, ``append_batch`` as the streaming job commits it) in the open hour;
  median of ``TICKS`` ticks per table, interleaved. Printed with what the table looks like
  (version, ``_delta_log`` entries, data files, commits read by the tick).
* ``refresh``: ``dg.materialize`` of ``price_indicators`` + ``market_movers`` for the newest
  closed hourly partition (what the automation sensor's run executes, in process; see
  :func:`benchmarks.project.materialize_partition`), each table in its own PostgreSQL
  database, after an untimed warm-up that materializes the previous and the newest hour;
  median of ``REFRESHES`` interleaved runs. The databases hold only what the warm-up wrote:
  growth of the indicator tables is what ``incremental_7d / incremental_1h`` measures.
* ``read``: reading ONE hour as the refresh does (the window files of a pinned snapshot,
  ``compute.raw_window_files``, then ``compute.read_raw_window_local``: ``[hour - 300 s, hour +
  1 h)``, ``ind.RAW_INPUT_COLUMNS``) before and after that hour's compaction, on each table. A
  fresh copy of each gets the 120 polls of the open hour (one ``append_batch`` each: 120
  per-poll files beside the date partition's compacted file), its snapshot is pinned
  (``before``), ``compaction.compact(before=END + 1 h)`` rewrites the date partition into one
  file (32 k-row row groups in commit order) and the new snapshot is pinned (``after``). The
  pinned ``before`` version stays readable (its files are tombstoned, not vacuumed, within the
  retention), so the four reads are interleaved: median of ``READS`` rounds after an untimed
  one. Both reads must return the same rows (compaction changes no row); printed with the files
  and row groups they read (row groups kept by the ``ts`` statistics / in the files read).
* ``commit``: ``append_batch`` of one ``COMMIT_COINS``-coin poll with an application
  transaction and the (id, ts) dedup, ``COMMITS`` times on a fresh table and on the 30-day
  table (interleaved; the first commit of each is untimed): ``raw_commit_p50_ms`` /
  ``raw_commit_p95_ms``.

Full mode adds :mod:`benchmarks.soak` (RSS of the long-running processes over an accelerated
soak).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import data, project
from benchmarks.loadavg import LoadSampler
from benchmarks.report import print_table, ratio_line

logger = logging.getLogger(__name__)

END = pd.Timestamp("2026-01-08T12:00:00Z")  # the open hour starts here
COINS = 50
HISTORIES = {"1h": 1, "30d": 30 * 24}
#: Hours before END replayed commit by commit (one ``append_batch`` per poll, ``compact()`` at
#: every hour boundary): the date partition of END since midnight, i.e. every partition still
#: written, and far more than the log (1 h) and VACUUM (6 h) retentions.
REPLAY_HOURS = 12
TICKS = 25
REFRESHES = 7
COMMITS = 40
READS = 7
COMMIT_COINS = 250
APP_ID = "raw_prices_stream:bench"
VERSION = 3


def _with_date(table):
    import pyarrow as pa
    import pyarrow.compute as pc

    return table.append_column("date", pc.cast(table["ts"], pa.date32()))


def _interval_hours(text: str) -> float:
    """Hours of a Delta interval property (``"interval 1 hours"``)."""
    _, amount, unit = text.split()
    per_hour = {"second": 1 / 3600, "minute": 1 / 60, "hour": 1.0, "day": 24.0, "week": 168.0}
    return float(amount) * per_hour[unit.lower().rstrip("s")]


class _BuildClock:
    """Maps simulated time (hours since the history's start) onto the build's wall clock.

    ``mark(h)`` records the wall time at which the build reached simulated hour ``h``; a
    retention of ``hours`` at simulated hour ``h`` becomes the wall duration since the build
    reached ``h - hours`` (interpolated; before the first mark: the first mark).
    """

    def __init__(self) -> None:
        self.marks: dict[int, float] = {}

    def mark(self, hour: int) -> None:
        self.marks[hour] = time.time()

    def wall(self, hour: float) -> float:
        keys = sorted(self.marks)
        if hour <= keys[0]:
            return self.marks[keys[0]]
        lo = max(k for k in keys if k <= hour)
        hi = min((k for k in keys if k >= hour), default=lo)
        if hi == lo:
            return self.marks[lo]
        return self.marks[lo] + (hour - lo) / (hi - lo) * (self.marks[hi] - self.marks[lo])

    def properties(self, hour: int, retention_hours: float) -> dict[str, str]:
        """The table properties at simulated hour ``hour``: the real ones with both retentions
        scaled to the build's clock (milliseconds)."""
        from marketflow_assets.raw_dataset import LOG_RETENTION, table_configuration

        now = time.time()

        def scaled(hours: float) -> str:
            ms = max(1, int(1000 * (now - self.wall(hour - hours))))
            return f"interval {ms} milliseconds"

        return {
            **table_configuration(retention_hours),
            "delta.logRetentionDuration": scaled(_interval_hours(LOG_RETENTION)),
            "delta.deletedFileRetentionDuration": scaled(retention_hours),
        }


def _checkpoint_tombstones(raw: Path) -> int:
    """``remove`` actions (tombstones) in the newest checkpoint of ``raw``."""
    import pyarrow.parquet as pq

    checkpoints = sorted((raw / "_delta_log").glob("*.checkpoint*.parquet"))
    if not checkpoints:
        return 0
    column = pq.read_table(checkpoints[-1], columns=["remove"]).column("remove")
    return len(column) - column.null_count


def ensure_table(label: str, hours: int) -> Path:
    """``<bench>/costs/v<VERSION>_<name>/raw_prices``: the table (built once, see the module
    docstring)."""
    from unittest import mock

    import pyarrow as pa

    from marketflow_assets import compaction
    from marketflow_assets.raw_dataset import (
        append_batch,
        commit_properties,
        open_table,
        snapshot,
        table_configuration,
    )
    from marketflow_assets.settings import load_raw_retention_hours

    history = data.History(coins=COINS, hours=hours, end=END.isoformat(), files="hour")
    root = data.bench_dir() / "costs" / f"v{VERSION}_{history.name}"
    raw = root / "raw_prices"
    marker = root / "_COMPLETE"
    if marker.exists():
        return raw
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    retention = load_raw_retention_hours()
    replayed = min(hours, REPLAY_HOURS)
    settled = hours - replayed
    logger.info(
        "costs %s: building the table (%d settled hours, %d hours commit by commit) ...",
        label,
        settled,
        replayed,
    )
    by_day: dict[str, list] = {}
    for h in range(settled):
        hour_start = history.start_ts + pd.Timedelta(hours=h)
        by_day.setdefault(f"{hour_start:%Y-%m-%d}", []).append(data.generate_hour(history, h))
    for day, tables in by_day.items():  # what OPTIMIZE leaves of a day: one file, commit order
        append_batch(raw, _with_date(pa.concat_tables(tables)), metadata={"settled": day})
    clock = _BuildClock()
    clock.mark(settled)
    batch = 0
    commits = compactions = 0
    scaled: dict[str, str] = {}
    # compact() sets the table properties it finds differing from table_configuration(): during
    # the fast-forward it is handed the scaled ones (see the module docstring)
    with mock.patch.object(compaction, "table_configuration", lambda _hours: scaled):
        for h in range(settled, hours):
            hour = _with_date(data.generate_hour(history, h))
            for k in range(hour.num_rows // COINS):
                append_batch(raw, hour.slice(k * COINS, COINS), app_id=APP_ID, batch_id=batch)
                batch += 1
                commits += 1
            clock.mark(h + 1)
            scaled = clock.properties(h + 1, retention)
            hour_end = history.start_ts + pd.Timedelta(hours=h + 1)
            compaction.compact(raw, before=hour_end.to_pydatetime(), log=logger.debug)
            compactions += 1
    # what the hourly VACUUM has deleted by END: the files removed more than `retention`
    # simulated hours ago (compact()'s own VACUUM takes whole wall hours: it deletes nothing here)
    table = open_table(raw)
    vacuumed = table.vacuum(
        retention_hours=None,  # the table's (scaled) delta.deletedFileRetentionDuration
        dry_run=False,
        enforce_retention_duration=False,
        full=True,
        commit_properties=commit_properties("vacuum"),
    )
    # back to the real properties, and one real compaction (checkpoint + log cleanup)
    table.update_incremental()
    table.alter.set_table_properties(table_configuration(retention), raise_if_not_exists=False)
    report = compaction.compact(raw, before=END.to_pydatetime(), log=logger.debug)
    assert open_table(raw).metadata().configuration == table_configuration(retention)
    snap = snapshot(raw)
    info = {
        "rows": history.rows,
        "build_s": round(time.perf_counter() - started, 1),
        "poll_commits": commits,
        "compactions": compactions + 1,
        "vacuumed_at_end": len(vacuumed),
        "version": snap.version,
        "data_files": len(snap.files_all),
        "files_on_disk": sum(1 for _ in raw.glob("date=*/*.parquet")),
        "log_entries": len(os.listdir(raw / "_delta_log")),
        "checkpoint_tombstones": _checkpoint_tombstones(raw),
        "last_compaction": report.summary(),
        "next_batch": batch,
    }
    marker.write_text(json.dumps(info))
    logger.info("costs %s: built %s", label, info)
    return raw


def _fresh_copy(raw: Path, scratch: Path, label: str) -> Path:
    """A scratch copy of the cached table: data files hard-linked, the log copied with its file
    times shifted so that its newest file is "now" (the cache is never written)."""
    target = scratch / label / "raw_prices"
    shutil.copytree(
        raw,
        target,
        copy_function=lambda s, d: Path(d).hardlink_to(s),
        ignore=shutil.ignore_patterns("_delta_log"),
    )
    shutil.copytree(raw / "_delta_log", target / "_delta_log")
    entries = list((target / "_delta_log").iterdir())
    shift = time.time() - max(p.stat().st_mtime for p in entries)
    for p in entries:
        st = p.stat()
        os.utime(p, (st.st_atime + shift, st.st_mtime + shift))
    return target


def _poll(k: int, coins: int = COINS, hours_after_end: int = 0):
    """Poll ``k`` of the hour starting ``hours_after_end`` hours after :data:`END`."""
    start = END + pd.Timedelta(hours=hours_after_end)
    history = data.History(coins=coins, hours=1, end=(start + pd.Timedelta(hours=1)).isoformat())
    return _with_date(data.generate_hour(history, 0).slice(k * coins, coins))


def _next_batch(raw: Path) -> int:
    from marketflow_assets.raw_dataset import committed_batch

    done = committed_batch(raw, APP_ID)
    return 0 if done is None else done + 1


def observe(raws: dict[str, Path], scratch: Path) -> dict[str, dict]:
    import dagster as dg

    import marketflow_assets.definitions  # noqa: F401 - loads assets before their sensors
    from marketflow_assets.defs.raw_prices.sensors import (
        new_commits,
        parse_cursor,
        raw_prices_observation_sensor,
    )
    from marketflow_assets.raw_dataset import append_batch, open_table, snapshot
    from marketflow_assets.resources import RawDataResource

    state = {}
    for label, raw in raws.items():
        copy = _fresh_copy(raw, scratch, label)
        state[label] = {
            "raw": copy,
            "instance": dg.DagsterInstance.ephemeral(),
            "resources": {"raw_data": RawDataResource(data_dir=str(copy.parent))},
            "cursor": None,
            "times": [],
            "batch": _next_batch(copy),
        }
    for k in range(TICKS + 1):  # tick 0: bootstraps the cursor (untimed)
        for label, s in state.items():
            append_batch(s["raw"], _poll(k), app_id=APP_ID, batch_id=s["batch"])
            s["batch"] += 1
            context = dg.build_sensor_context(
                instance=s["instance"], cursor=s["cursor"], resources=s["resources"]
            )
            started = time.perf_counter()
            result = raw_prices_observation_sensor(context)
            elapsed = time.perf_counter() - started
            assert isinstance(result, dg.SensorResult) and result.asset_events, (label, k)
            if k:
                assert result.asset_events[0].metadata["new_rows"].value == COINS, (label, k)
                s["times"].append(elapsed)
            s["cursor"] = result.cursor
    # what one more tick looks at
    for s in state.values():
        append_batch(s["raw"], _poll(TICKS + 1), app_id=APP_ID, batch_id=s["batch"])
        s["batch"] += 1
        table = open_table(s["raw"])
        s["new"] = new_commits(table, parse_cursor(s["cursor"]))
        snap = snapshot(s["raw"])
        s["version"] = snap.version
        s["dates"] = len(snap.days())
        s["files"] = len(snap.files_all)
        log = s["raw"] / "_delta_log"
        s["log"] = len(list(log.iterdir()))
        checkpoints = sorted(log.glob("*.checkpoint.parquet"))
        s["checkpoint_kb"] = checkpoints[-1].stat().st_size / 1024 if checkpoints else 0.0
    return state


def commit_cost(state: dict[str, dict], scratch: Path) -> dict[str, list[float]]:
    """ms per ``append_batch`` of one ``COMMIT_COINS``-coin poll: a fresh table vs the 30-day
    table (after ``observe``), interleaved; the first commit of each is untimed."""
    from marketflow_assets.raw_dataset import append_batch

    targets = {"fresh": scratch / "fresh" / "raw_prices", "30d": state["30d"]["raw"]}
    batches = {"fresh": 0, "30d": state["30d"]["batch"]}
    times: dict[str, list[float]] = {label: [] for label in targets}
    for k in range(COMMITS + 1):
        rows = _poll(k, COMMIT_COINS, hours_after_end=1)
        for label, raw in targets.items():
            started = time.perf_counter()
            result = append_batch(raw, rows, app_id=APP_ID, batch_id=batches[label])
            elapsed = time.perf_counter() - started
            assert result.rows_written == COMMIT_COINS, (label, k, result)
            batches[label] += 1
            if k:
                times[label].append(1000 * elapsed)
    return times


def _row_groups(files, start, end) -> tuple[int, int]:
    """(row groups whose ``ts`` statistics overlap ``[start, end)``, row groups) of ``files``."""
    import pyarrow.parquet as pq

    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    kept = total = 0
    for raw_file in files:
        meta = pq.ParquetFile(raw_file.path).metadata
        column = meta.schema.names.index("ts")
        for i in range(meta.num_row_groups):
            total += 1
            stats = meta.row_group(i).column(column).statistics
            if stats is None or not stats.has_min_max:
                kept += 1
                continue
            smin, smax = (pd.Timestamp(v) for v in (stats.min, stats.max))
            smin = smin.tz_localize("UTC") if smin.tzinfo is None else smin
            smax = smax.tz_localize("UTC") if smax.tzinfo is None else smax
            kept += int(smin < hi and smax >= lo)
    return kept, total


def read_cost(raws: dict[str, Path], scratch: Path) -> dict[tuple[str, str], dict]:
    """One-hour read before / after the hour's compaction, per table (see the module
    docstring): ``{(table, "before" | "after"): {"times", "rows", "files", "row_groups", ...}}``."""
    from marketflow_assets import compaction
    from marketflow_assets.defs.indicators.compute import (
        lookback,
        raw_window_files,
        read_raw_window_local,
    )
    from marketflow_assets.raw_dataset import append_batch, snapshot

    start = END.to_pydatetime()
    end = (END + pd.Timedelta(hours=1)).to_pydatetime()
    history = data.History(coins=COINS, hours=1, end=(END + pd.Timedelta(hours=1)).isoformat())
    hour = _with_date(data.generate_hour(history, 0))
    polls = hour.num_rows // COINS
    snaps: dict[tuple[str, str], object] = {}
    reports = {}
    for label, raw in raws.items():
        copy = _fresh_copy(raw, scratch, f"read_{label}")
        batch = _next_batch(copy)
        for k in range(polls):
            append_batch(copy, hour.slice(k * COINS, COINS), app_id=APP_ID, batch_id=batch + k)
        snaps[(label, "before")] = snapshot(copy)
        reports[label] = compaction.compact(copy, before=end, log=logger.debug)
        snaps[(label, "after")] = snapshot(copy)
        assert reports[label].partitions_optimized == 1, reports[label].summary()
    out = {key: {"times": []} for key in snaps}
    for k in range(READS + 1):  # round 0: warm-up, untimed
        for key, snap in snaps.items():
            started = time.perf_counter()
            files = raw_window_files(snap, start, end)
            df = read_raw_window_local(files, start, end)
            elapsed = time.perf_counter() - started
            s = out[key]
            if k:
                s["times"].append(1000 * elapsed)
                assert len(df) == s["rows"] and len(files) == s["files"], (key, k)
            else:
                s["rows"], s["files"] = len(df), len(files)
                s["row_groups"] = _row_groups(files, lookback(start), end)
                s["version"] = snap.version
                s["hour_rows"] = int(((df["ts"] >= start) & (df["ts"] < end)).sum())
    for label in raws:
        before, after = out[(label, "before")], out[(label, "after")]
        assert before["rows"] == after["rows"], (label, before["rows"], after["rows"])
        assert before["hour_rows"] == after["hour_rows"] == hour.num_rows, label
        after["compaction"] = reports[label].summary()
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def refresh(raws: dict[str, Path], scratch: Path) -> dict[str, list[float]]:
    from benchmarks.incremental import database
    from marketflow_assets.runtime.services import EmbeddedPostgres

    start = (END - pd.Timedelta(hours=1)).to_pydatetime()
    key = project.partition_key(start)
    previous = project.partition_key(start - pd.Timedelta(hours=1))
    times: dict[str, list[float]] = {label: [] for label in raws}
    pg_dir = tempfile.mkdtemp(prefix="pg-", dir=scratch)
    try:
        with EmbeddedPostgres(pg_dir + "/pgdata") as server_url:
            urls = {label: database(server_url, f"costs_{label}") for label in raws}
            for label, raw in raws.items():  # warm-up, untimed
                project.materialize_partition(raw.parent, urls[label], previous)
                project.materialize_partition(raw.parent, urls[label], key)
            for _ in range(REFRESHES):
                for label, raw in raws.items():
                    times[label].append(project.materialize_partition(raw.parent, urls[label], key))
    finally:
        shutil.rmtree(pg_dir, ignore_errors=True)
    return times


def run(mode: str = "quick") -> None:
    started = time.perf_counter()
    raws = {label: ensure_table(label, hours) for label, hours in HISTORIES.items()}
    scratch = Path(tempfile.mkdtemp(prefix="costs-", dir=data.bench_dir()))
    try:
        obs = observe(raws, scratch)
        commits = commit_cost(obs, scratch)
        ref = refresh(raws, scratch)
        with LoadSampler() as read_load:
            reads = read_cost(raws, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {label: statistics.median(s["times"]) for label, s in obs.items()}
    rmed = {label: statistics.median(ref[label]) for label in ref}
    print_table(
        f"costs vs history: observation sensor tick and newest-hour refresh ({COINS} coins @ "
        "30 s, Delta table, compacted hourly; 30d: last 12 h one commit per poll)",
        [
            "history",
            "table version",
            "_delta_log entries (newest checkpoint KiB)",
            "date partitions / data files",
            "tick ms (median)",
            "tick: commits read",
            "refresh s (Dagster, median)",
            "refresh runs",
        ],
        [
            [
                label,
                str(s["version"]),
                f"{s['log']} ({s['checkpoint_kb']:.0f})",
                f"{s['dates']} / {s['files']}",
                f"{1000 * med[label]:.1f}",
                str(s["new"].commits),
                f"{rmed[label]:.2f}",
                " ".join(f"{t:.2f}" for t in ref[label]),
            ]
            for label, s in obs.items()
        ],
    )
    print_table(
        f"raw commit: append_batch of one {COMMIT_COINS}-coin poll (app transaction + (id, ts) "
        f"dedup), {COMMITS} commits each, interleaved",
        ["table", "p50 ms", "p95 ms", "max ms"],
        [
            [label, f"{_pct(v, 0.5):.1f}", f"{_pct(v, 0.95):.1f}", f"{max(v):.1f}"]
            for label, v in commits.items()
        ],
    )
    for label, values in commits.items():
        print(
            f"raw_commit_p50_ms[{label}] = {_pct(values, 0.5):.1f}  "
            f"raw_commit_p95_ms[{label}] = {_pct(values, 0.95):.1f}"
        )
    rdmed = {key: statistics.median(s["times"]) for key, s in reads.items()}
    print_table(
        f"one-hour read (the refresh's: window files of a pinned snapshot + read_rows_local, "
        f"[hour - 300 s, hour + 1 h)) of the open hour's {COINS}-coin polls before / after its "
        f"compaction, {READS} interleaved rounds ({read_load.describe()})",
        [
            "history",
            "compaction",
            "table version",
            "files read",
            "row groups kept / in files",
            "rows",
            "read ms (median)",
            "reads ms",
        ],
        [
            [
                label,
                phase,
                str(s["version"]),
                str(s["files"]),
                "{} / {}".format(*s["row_groups"]),
                str(s["rows"]),
                f"{rdmed[(label, phase)]:.1f}",
                " ".join(f"{t:.1f}" for t in s["times"]),
            ]
            for (label, phase), s in reads.items()
        ],
    )
    for label in raws:
        print(f"compaction of the open hour [{label}]: {reads[(label, 'after')]['compaction']}")
        print(
            f"read_1h_rows[{label}] before = {reads[(label, 'before')]['rows']}  "
            f"after = {reads[(label, 'after')]['rows']}"
        )
    print(f"costs benchmark took {time.perf_counter() - started:.0f} s")
    ratio_line("observe_30d / observe_1h", med["30d"] / med["1h"], "<= 1.5")
    ratio_line("refresh_30d / refresh_1h", rmed["30d"] / rmed["1h"], "<= 1.2")
    ratio_line(
        "raw_commit_p50 30d / fresh",
        _pct(commits["30d"], 0.5) / _pct(commits["fresh"], 0.5),
    )
    for label in raws:
        ratio_line(
            f"read_1h_after / read_1h_before compaction [{label}]",
            rdmed[(label, "after")] / rdmed[(label, "before")],
            suffix=read_load.describe(),
        )
    ratio_line(
        "read_30d / read_1h after compaction",
        rdmed[("30d", "after")] / rdmed[("1h", "after")],
        "≤ 1.6 (one date file, at most 24 h: bounded after a day)",
        suffix=read_load.describe(),
    )
    ratio_line(
        "read_30d / read_1h before compaction",
        rdmed[("30d", "before")] / rdmed[("1h", "before")],
        suffix=read_load.describe(),
    )
    if mode == "full":
        from benchmarks import soak

        soak.run()
