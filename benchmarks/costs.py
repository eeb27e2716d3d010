"""Costs that must not grow with history: one observation-sensor tick and the live refresh.

Two raw datasets ending at the same instant (:data:`END`), generated once with pyarrow
(:mod:`benchmarks.data`: ``COINS`` coins polled every 30 s) and then compacted by
:func:`marketflow_assets.compaction.compact` -- i.e. as the hourly compaction job leaves them:
one ``cpart-...`` file per closed hour plus a ``_compaction.json`` manifest per ``date=``
directory. ``30d`` holds 720 hours (31 date directories), ``1h`` the last hour only. Cached under
``$MARKETFLOW_BENCH_DIR/costs``.

* ``observe``: ``raw_prices_observation_sensor`` evaluated through ``dg.build_sensor_context``
  with its real cursor. Each timed tick follows the arrival of one new streaming-job file (one
  poll of all coins) in the open hour; median of ``TICKS`` ticks per history, interleaved.
  Printed with what each tick looked at (directories listed, names listed, files statted).
* ``refresh``: ``dg.materialize`` of ``price_indicators`` + ``market_movers`` for the newest
  hourly partition (what the automation sensor's run executes, in process; see
  :func:`benchmarks.project.materialize_partition`), each history in its own PostgreSQL
  database, after an untimed warm-up that materializes the previous and the newest hour;
  median of ``REFRESHES`` interleaved runs. The databases hold only what the warm-up wrote:
  growth of the indicator tables is what ``incremental_7d / incremental_1h`` measures.

Full mode adds :mod:`benchmarks.soak` (RSS of the long-running processes over an accelerated
soak).
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import data, project
from benchmarks.report import print_table, ratio_line

logger = logging.getLogger(__name__)

END = pd.Timestamp("2026-01-08T12:00:00Z")  # the open hour starts here
COINS = 50
HISTORIES = {"1h": 1, "30d": 30 * 24}
TICKS = 25
REFRESHES = 7
VERSION = 1


def ensure_compacted(label: str, hours: int) -> Path:
    """``<bench>/costs/<name>/raw_prices``: the history, compacted (generated once)."""
    from marketflow_assets import compaction

    history = data.History(coins=COINS, hours=hours, end=END.isoformat(), files="hour")
    root = data.bench_dir() / "costs" / f"v{VERSION}_{history.name}"
    raw = root / "raw_prices"
    marker = root / "_COMPLETE"
    if marker.exists():
        return raw
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    logger.info("costs %s: generating %d rows, then compacting ...", label, history.rows)
    for h in range(history.hours):
        hour_start = history.start_ts + pd.Timedelta(hours=h)
        data._write_hour(data.generate_hour(history, h), raw, hour_start, history)
    report = compaction.compact(raw, before=END.to_pydatetime())
    marker.write_text(json.dumps({"rows": history.rows, "compaction": report.summary()}))
    logger.info("costs %s: %s (%.1f s)", label, report.summary(), time.perf_counter() - started)
    return raw


def _fresh_copy(raw: Path, scratch: Path, label: str) -> Path:
    """A scratch copy (hard links) of the cached dataset, so new files never touch the cache."""
    target = scratch / label / "raw_prices"
    shutil.copytree(raw, target, copy_function=lambda s, d: Path(d).hardlink_to(s))
    return target


def _new_poll(raw: Path, k: int) -> None:
    """One streaming-job file with poll ``k`` of the open hour (all coins)."""
    import pyarrow.parquet as pq

    history = data.History(coins=COINS, hours=1, end=(END + pd.Timedelta(hours=1)).isoformat())
    table = data.generate_hour(history, 0).slice(k * COINS, COINS)
    ts = int(table.column("ts").cast("int64")[0].as_py())
    folder = raw / f"date={END:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-00000000b0b0-b{k:010d}-000-{ts}-{ts}.parquet"
    pq.write_table(table, folder / f".{name}")
    (folder / f".{name}").rename(folder / name)  # as the sink publishes: rename into place


def observe(raws: dict[str, Path], scratch: Path) -> dict[str, dict]:
    import dagster as dg

    import marketflow_assets.definitions  # noqa: F401 - loads assets before their sensors
    from marketflow_assets.defs.raw_prices.sensors import (
        RawCursor,
        new_raw_files,
        raw_prices_observation_sensor,
    )
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
        }
    for k in range(TICKS + 1):  # tick 0: bootstraps the cursor (untimed)
        for label, s in state.items():
            _new_poll(s["raw"], k)
            time.sleep(0.01)
            context = dg.build_sensor_context(
                instance=s["instance"], cursor=s["cursor"], resources=s["resources"]
            )
            started = time.perf_counter()
            result = raw_prices_observation_sensor(context)
            elapsed = time.perf_counter() - started
            assert isinstance(result, dg.SensorResult) and result.asset_events, (label, k)
            assert result.asset_events[0].metadata["new_rows"].value == COINS, (label, k)
            if k:
                s["times"].append(elapsed)
            s["cursor"] = result.cursor
    # what one more tick looks at, counted by the sensor's own scan function
    for s in state.values():
        _new_poll(s["raw"], TICKS + 1)
        _, _, stats = new_raw_files(s["raw"], RawCursor.parse(s["cursor"]))
        s["stats"] = stats
        s["dates"] = len(list(s["raw"].glob("date=*")))
        s["files"] = len(list(s["raw"].glob("date=*/*.parquet")))
    return state


def refresh(raws: dict[str, Path], scratch: Path) -> dict[str, list[float]]:
    from benchmarks.incremental import _database
    from marketflow_assets.runtime.services import EmbeddedPostgres

    start = (END - pd.Timedelta(hours=1)).to_pydatetime()
    key = project.partition_key(start)
    previous = project.partition_key(start - pd.Timedelta(hours=1))
    times: dict[str, list[float]] = {label: [] for label in raws}
    pg_dir = tempfile.mkdtemp(prefix="pg-", dir=scratch)
    try:
        with EmbeddedPostgres(pg_dir + "/pgdata") as server_url:
            urls = {label: _database(server_url, f"costs_{label}") for label in raws}
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
    raws = {label: ensure_compacted(label, hours) for label, hours in HISTORIES.items()}
    scratch = Path(tempfile.mkdtemp(prefix="costs-", dir=data.bench_dir()))
    try:
        obs = observe(raws, scratch)
        ref = refresh(raws, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {label: statistics.median(s["times"]) for label, s in obs.items()}
    rmed = {label: statistics.median(ref[label]) for label in ref}
    print_table(
        f"costs vs history: observation sensor tick and newest-hour refresh ({COINS} coins @ "
        "30 s, compacted: one file per closed hour)",
        [
            "history",
            "date dirs",
            "files",
            "tick ms (median)",
            "tick: dirs listed / names listed / files statted",
            "refresh s (Dagster, median)",
            "refresh runs",
        ],
        [
            [
                label,
                str(s["dates"]),
                str(s["files"]),
                f"{1000 * med[label]:.1f}",
                f"{s['stats'].dirs_listed} / {s['stats'].entries_listed} / "
                f"{s['stats'].files_statted}",
                f"{rmed[label]:.2f}",
                " ".join(f"{t:.2f}" for t in ref[label]),
            ]
            for label, s in obs.items()
        ],
    )
    print(f"costs benchmark took {time.perf_counter() - started:.0f} s")
    ratio_line("observe_30d / observe_1h", med["30d"] / med["1h"], "<= 1.5")
    ratio_line("refresh_30d / refresh_1h", rmed["30d"] / rmed["1h"], "<= 1.2")
    if mode == "full":
        from benchmarks import soak

        soak.run()
