"""Accelerated soak (full mode only): RSS of the long-running processes over many hours of polls.

The pipeline runs as ``marketflow up`` runs it (embedded broker and PostgreSQL, the Spark
streaming job, Dagster's code server, webserver and daemon with its sensors and schedules), then
``marketflow ingest --source replay`` publishes ``HOURS`` hours of recorded-format polls
(``COINS`` coins every 30 s, ``ts`` ending now) at ``SPEED`` times real time, the streaming job
triggering a micro-batch every ``TRIGGER_S`` seconds (many batches, as hours of a live run bring,
not a few large ones). While it runs this process compacts the ``raw_prices`` Delta table
(OPTIMIZE + VACUUM) every ``COMPACT_EVERY_S`` seconds (the hourly compaction job,
time-compressed like the polls). The resident set size (RSS) of the Spark driver (the job's
Python driver + its JVM), the Dagster daemon and the Dagster webserver processes is sampled
once everything is ready and again after the replay has been drained.

Prints a table and ``soak_rss_growth_<process> = after / start`` lines (no target in the issue:
flat means close to 1; JVM heaps grow until their first full GC, so one soak is a trend, not a
proof).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks import data
from benchmarks.processes import clean_up, create_topics, scratch_run, stop_children, wait_for
from benchmarks.report import print_table, ratio_line

logger = logging.getLogger(__name__)

HOURS = 12
COINS = 50
INTERVAL_S = 30
SPEED = 120.0  # 12 hours of polls in 6 minutes
COMPACT_EVERY_S = 30.0
TRIGGER_S = 2.0  # streaming job micro-batch interval during the soak (up uses 10 s)


def write_replay(path: Path, end: datetime) -> int:
    """JSON Lines replay file: ``HOURS`` hours of polls ending at ``end``; returns the polls."""
    history = data.History(coins=COINS, hours=HOURS, interval_s=INTERVAL_S)
    polls = 0
    start = end - timedelta(hours=HOURS)
    with open(path, "w") as fh:
        for h in range(HOURS):
            table = data.generate_hour(history, h).to_pylist()
            for i in range(0, len(table), COINS):
                ts = start + timedelta(hours=h, seconds=INTERVAL_S * (i // COINS))
                coins = [
                    {
                        "id": r["id"],
                        "symbol": r["symbol"],
                        "name": r["name"],
                        "current_price": r["current_price"],
                        "market_cap": r["market_cap"],
                        "total_volume": r["total_volume"],
                        "high_24h": r["high_24h"],
                        "low_24h": r["low_24h"],
                        "last_updated": ts.isoformat().replace("+00:00", "Z"),
                    }
                    for r in table[i : i + COINS]
                ]
                ts_text = ts.isoformat().replace("+00:00", "Z")
                fh.write(json.dumps({"ts": ts_text, "coins": coins}) + "\n")
                polls += 1
    return polls


def _raw_rows(raw_dir: Path) -> int:
    """Rows in the newest version of the ``raw_prices`` table (from the log's statistics)."""
    from marketflow_assets.raw_dataset import snapshot

    return snapshot(raw_dir).row_count()


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total


def _own_rss(proc) -> int:
    """RSS of the process itself (not of the run workers / code servers it starts)."""
    import psutil

    if proc is None:
        return 0
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def rss(spark_pid: int, webserver_pid: int, daemon_pid: int) -> dict[str, int]:
    """RSS in bytes of the Spark driver tree (Python driver + JVM), the Dagster daemon and the
    webserver processes (``up``'s ``dagster-daemon`` and ``dagster`` children)."""
    import psutil

    return {
        "spark driver (python + JVM)": _tree_rss(psutil.Process(spark_pid)),
        "dagster daemon": _own_rss(psutil.Process(daemon_pid)),
        "dagster webserver": _own_rss(psutil.Process(webserver_pid)),
    }


def run() -> None:
    from marketflow_assets import compaction
    from marketflow_assets.raw_dataset import snapshot
    from marketflow_assets.resources.postgres import PostgresResource
    from marketflow_assets.runtime import up
    from marketflow_assets.runtime.services import free_port, running_services
    from marketflow_assets.settings import Settings

    scratch, work = scratch_run("soak")
    replay = work / "replay.jsonl"
    polls = write_replay(replay, datetime.now(UTC).replace(microsecond=0))
    settings = Settings(data_dir=work)
    args = argparse.Namespace(
        source="replay",
        coins=COINS,
        interval=INTERVAL_S,
        replay_file=str(replay),
        speed=SPEED,
        host="127.0.0.1",
        port=free_port(),
        spark_master="local[*]",
    )
    print(
        f"soak: {HOURS} h of polls ({polls} polls of {COINS} coins) replayed at {SPEED:g}x "
        f"through marketflow up's processes, compaction every {COMPACT_EVERY_S:g} s"
    )
    children: list = []
    started = time.monotonic()
    try:
        with running_services(settings, log=logger.info) as resolved:
            PostgresResource(url=resolved.postgres_url).ensure_tables()
            create_topics(resolved)
            env = up.child_env(resolved, args)
            built = {child.name: child for child in up.build_children(args, resolved, "replay")}
            ingest, spark, dagster = built["ingest"], built["spark"], built["dagster"]
            # many micro-batches, as many hours of a live run would bring (time-compressed too)
            spark.argv += ["--trigger-seconds", str(TRIGGER_S)]
            for child in (spark, built["dagster-code"], dagster, built["dagster-daemon"]):
                up.start_child(child, env)
                children.append(child)
            probes = up.ReadinessProbes(resolved, args)
            wait_for(probes._ui_serves, 240, "the Dagster UI", children)
            wait_for(
                lambda: (
                    "starting marketflow_raw_prices" in spark.log_path.read_text("utf-8", "replace")
                ),
                240,
                "the Spark streaming job",
                children,
            )
            time.sleep(20)  # let the daemon load the code location and start ticking
            at_start = rss(spark.proc.pid, dagster.proc.pid, built["dagster-daemon"].proc.pid)
            up.start_child(ingest, env)
            children.append(ingest)
            last_compaction = time.monotonic()
            compactions = 0
            deadline = time.monotonic() + polls * INTERVAL_S / SPEED + 600
            while ingest.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
                if time.monotonic() - last_compaction > COMPACT_EVERY_S:
                    compaction.compact(resolved.raw_dir)
                    compactions += 1
                    last_compaction = time.monotonic()
            # drain: wait until every poll is in the raw dataset (bounded), then a minute more
            # for the last refresh runs
            expected = polls * COINS
            drain_until = time.monotonic() + 600
            while _raw_rows(resolved.raw_dir) < expected and time.monotonic() < drain_until:
                time.sleep(5)
            time.sleep(60)
            compaction.compact(resolved.raw_dir)
            after = rss(spark.proc.pid, dagster.proc.pid, built["dagster-daemon"].proc.pid)
            files = len(snapshot(resolved.raw_dir).files_all)  # data files of the table
            rows = _raw_rows(resolved.raw_dir)
            stop_children(children)
    finally:
        clean_up(children, work, scratch)
    mib = 1024 * 1024
    print_table(
        f"soak: RSS at start and after {HOURS} h of polls at {SPEED:g}x "
        f"({time.monotonic() - started:.0f} s; {rows:,} of {polls * COINS:,} rows in raw_prices, "
        f"{files} raw files after {compactions} compactions)",
        ["process", "RSS start MiB", "RSS after MiB", "after / start"],
        [
            [
                name,
                f"{at_start[name] / mib:.0f}",
                f"{after[name] / mib:.0f}",
                f"{after[name] / max(at_start[name], 1):.2f}",
            ]
            for name in at_start
        ],
    )
    for name, key in (
        ("spark_driver", "spark driver (python + JVM)"),
        ("dagster_daemon", "dagster daemon"),
        ("dagster_webserver", "dagster webserver"),
    ):
        ratio_line(f"soak_rss_growth_{name}", after[key] / max(at_start[key], 1))
