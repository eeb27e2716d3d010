"""``marketflow follow``: the live fast path from new raw Parquet to ``price_indicators``.

It keeps the project loaded (why a process beside the daemon: ``docs/DECISIONS.md``), looks at
the raw table's log every ``--poll`` seconds and lists the newest raw files when a commit landed
(:func:`~marketflow_assets.raw_dataset.log_marker`; at least every :data:`FULL_LOOK_SECONDS`
anyway) and, as soon as one appears, executes ``refresh_indicators_job`` for the
hours it touches in process (``execute_in_process`` on the Dagster instance of ``$DAGSTER_HOME``),
so every refresh is still a Dagster run with its materializations, metadata and blocking checks,
visible in the UI and seen by the alert sensor. The refresh itself is incremental
(:mod:`marketflow_assets.defs.indicators.incremental`): one poll plus the 5-minute lookback.

``marketflow up`` starts it as a child. The automation sensor stays as the fallback: it skips
while this follower has refreshed within
:data:`~marketflow_assets.defs.indicators.sensors.LIVE_GRACE_S`
and the new data lies within :data:`~marketflow_assets.defs.indicators.sensors.LIVE_HORIZON_HOURS`
(older late data, or a stopped follower, go through the sensor as before).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from marketflow_assets.raw_dataset import RawFile, file_ts_range, list_raw_files, log_marker
from marketflow_assets.runtime.heap import settle_startup_heap
from marketflow_assets.runtime.signals import stop_after_work_in_hand
from marketflow_assets.settings import ConfigError, Settings

logger = logging.getLogger("marketflow.follow")

#: The follower lists the table's files at least this often, even when its log looks unchanged.
FULL_LOOK_SECONDS = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--poll",
        type=float,
        default=0.1,
        help="seconds between two looks at the raw table's log (its files are listed when a "
        "commit landed)",
    )
    # test knob: stop after this many refresh runs (hidden from --help)
    parser.add_argument("--max-runs", type=int, default=None, help=argparse.SUPPRESS)


class Follower:
    """Watches ``raw_dir`` and runs ``job`` for the partitions new files touch."""

    def __init__(self, raw_dir: Path, instance, job, horizon_hours: int | None = None):
        from marketflow_assets.defs.indicators.sensors import LIVE_HORIZON_HOURS

        self.raw_dir = Path(raw_dir)
        self.instance = instance
        self.job = job
        self.horizon = timedelta(hours=horizon_hours or LIVE_HORIZON_HOURS)
        self.known: set[Path] = set()
        self.runs: list[dict] = []
        self._marker: object = object()  # the log's mark at the last listing (none yet)
        self._listed_at = 0.0

    def _recent_files(self) -> list[RawFile]:
        return list_raw_files(self.raw_dir, datetime.now(UTC) - self.horizon)

    def new_files(self) -> list[RawFile]:
        files = [f for f in self._recent_files() if f.path not in self.known]
        return files

    def log_moved(self) -> bool:
        """Whether the table's files are worth listing: a commit landed since the last listing
        (the log's mark moved), or :data:`FULL_LOOK_SECONDS` passed. Taking the mark before the
        listing, a commit landing in between is listed now and once more next time."""
        marker, now = log_marker(self.raw_dir), time.monotonic()
        if marker == self._marker and now - self._listed_at < FULL_LOOK_SECONDS:
            return False
        self._marker, self._listed_at = marker, now
        return True

    def step(self) -> dict | None:
        """One look; when there are new files, one refresh run. Returns the run's summary."""
        from marketflow_assets.defs.common.launch import FOLLOW, LAUNCHED_BY_TAG
        from marketflow_assets.defs.indicators.jobs import partition_range_tags
        from marketflow_assets.defs.indicators.sensors import LIVE_TRIGGER_TAG, partition_range

        if not self.log_moved():
            return None
        new = self.new_files()
        if not new:
            return None
        seen_at = time.time()
        ranges = [r for r in (file_ts_range(f) for f in new) if r is not None]
        self.known.update(f.path for f in new)
        if not ranges:
            return None
        oldest, newest = min(r[0] for r in ranges), max(r[1] for r in ranges)
        keys = partition_range(oldest, newest, self.job.partitions_def)
        if keys is None:
            return None
        tags = {LIVE_TRIGGER_TAG: "live", LAUNCHED_BY_TAG: FOLLOW}
        kwargs: dict = {"partition_key": keys[0]} if keys[0] == keys[1] else {}
        if keys[0] != keys[1]:
            tags.update(partition_range_tags(*keys))
        started = time.time()
        try:
            result = self.job.execute_in_process(
                instance=self.instance,
                tags=tags,
                # the run's events are in Dagster; this log keeps one line per run, not each
                # step's DEBUG events (2,345 lines in 22 minutes)
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                raise_on_error=False,
                **kwargs,
            )
            ok = result.success
            run_id = result.run_id
        except Exception as exc:  # noqa: BLE001 - logged; the next file tries again
            logger.error("refresh of %s .. %s failed: %s", keys[0], keys[1], exc)
            ok, run_id = False, None
        summary = {
            "partitions": keys,
            "files": len(new),
            "newest_ts": newest,
            "lag_at_detection_s": seen_at - newest.timestamp(),
            "run_s": time.time() - started,
            "success": ok,
            "run_id": run_id,
        }
        self.runs.append(summary)
        logger.info(
            "%d new raw file(s) up to %s: run %s for %s .. %s %s in %.2f s "
            "(file seen %.1f s after its newest ts)",
            len(new),
            newest.isoformat(),
            run_id,
            keys[0],
            keys[1],
            "succeeded" if ok else "FAILED",
            summary["run_s"],
            summary["lag_at_detection_s"],
        )
        return summary

    def abandon_stale_runs(self) -> None:
        """Live runs a killed follower left STARTED are marked failed (else the automation
        sensor would wait for them)."""
        from marketflow_assets.defs.common.runs import in_flight_runs
        from marketflow_assets.defs.indicators.sensors import LIVE_TRIGGER_TAG

        for record in in_flight_runs(self.instance, self.job.name, tags={LIVE_TRIGGER_TAG: "live"}):
            run = record.dagster_run
            self.instance.report_run_failed(run)
            logger.info("marked the stale live run %s (from a stopped follower) failed", run.run_id)


def _instance():
    """The instance of ``$DAGSTER_HOME`` (``marketflow up`` sets it), else an ephemeral one."""
    import dagster as dg

    try:
        return dg.DagsterInstance.get()
    except Exception as exc:  # noqa: BLE001 - DAGSTER_HOME unset or unusable
        logger.warning("no Dagster instance (%s): runs go to an ephemeral one, not the UI", exc)
        return dg.DagsterInstance.ephemeral()


def hold_connections(instance) -> None:
    """Keep the instance's PostgreSQL connections open between queries, as Dagster's webserver
    does (``optimize_for_webserver``: one pooled connection per storage, more while threads need
    them; no statement timeout here). dagster-postgres otherwise opens a connection for every
    query - a backend started and authenticated each time: 28 % of a follower's run at 250
    coins went into connecting. A connection PostgreSQL dropped (a restart) fails the query that
    finds it, and so that run, like any failed refresh, and is replaced; the refresh ledger is
    written with the rows, so a later refresh of the hour folds in what that run did not commit.
    No-op on SQLite."""
    instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=4)


def run(
    args: argparse.Namespace,
    settings: Settings,
    stop: threading.Event | None = None,
    *,
    defs,  # dagster.Definitions
) -> int:
    """``marketflow follow`` with the code location's ``defs`` (handed over by the command
    line: nothing under ``defs/`` imports ``definitions.py``)."""
    if args.poll <= 0:
        raise ConfigError(f"--poll must be positive, got {args.poll:g}")
    from marketflow_assets.defs.indicators.jobs import refresh_indicators_job

    stop = stop or threading.Event()
    job = defs.resolve_job_def(refresh_indicators_job.name)
    instance = _instance()
    hold_connections(instance)
    follower = Follower(settings.raw_dir, instance, job)
    follower.abandon_stale_runs()
    # Files already there are the sensors' and the schedule's business; the ledger makes the
    # first refresh here catch up on anything they have not folded in yet.
    follower.known.update(f.path for f in follower._recent_files())
    logger.info(
        "following %s every %g s: new files -> %s in process", settings.raw_dir, args.poll, job.name
    )

    def loop() -> None:
        while not stop.wait(args.poll):
            summary = follower.step()
            if summary is not None and args.max_runs and len(follower.runs) >= args.max_runs:
                stop.set()

    # Runs execute in a worker thread: Dagster then leaves the signal handlers alone, so
    # SIGINT/SIGTERM reach this thread, which lets the run in hand finish and stops the loop.
    worker = threading.Thread(target=loop, name="marketflow-follow", daemon=True)
    settle_startup_heap("follow")
    with stop_after_work_in_hand(stop, work="the run in hand", log=logger):
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    if args.max_runs:  # a finite run (tests, scripts): 1 when a refresh failed
        return 0 if all(r["success"] for r in follower.runs) else 1
    return 0  # stopped by a signal; failed runs are in Dagster (and alerted on)
