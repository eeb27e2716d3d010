"""The live fast path (``marketflow follow``): new raw files -> in-process Dagster runs -> rows;
the automation sensor leaves recent data to a live follower and takes over without one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd

from marketflow_assets import definitions
from marketflow_assets.defs.indicators.follow import Follower
from marketflow_assets.defs.indicators.sensors import LIVE_TRIGGER_TAG, indicators_follow_raw_prices
from marketflow_assets.defs.raw_prices.assets import RAW_PRICES_KEY
from marketflow_assets.raw_dataset import list_raw_files
from marketflow_assets_tests.helpers import (
    assert_indicators_match_reference,
    read_table,
    write_raw_parquet,
)


def _micros(ts) -> int:
    return int(pd.Timestamp(ts).value // 1000)


def write_poll(raw_dir, ts, batch, coins=4):
    rows = [(f"coin-{k}", f"C{k}", ts, 10.0 + k + 0.01 * batch) for k in range(coins)]
    name = f"part-0f0110-b{batch}-000-{_micros(ts)}-{_micros(ts)}.parquet"
    write_raw_parquet(raw_dir, rows, name=name)
    return rows


def test_follower_refreshes_new_files_in_process_and_the_sensor_defers_to_it(
    data_dir, pg_clean, spark
):
    raw_dir = data_dir / "raw_prices"
    instance = dg.DagsterInstance.ephemeral()
    defs = dg.Definitions(  # the job as deployed, on the test's Postgres and data dir
        assets=definitions.ASSETS,
        asset_checks=definitions.ASSET_CHECKS,
        jobs=definitions.JOBS,
        resources=definitions.build_resources(pg_clean, str(data_dir)),
    )
    job = defs.resolve_job_def("refresh_indicators_job")
    follower = Follower(raw_dir, instance, job)
    assert follower.step() is None  # nothing there yet

    # polls of the last minutes (the follower looks at the last LIVE_HORIZON_HOURS)
    now = datetime.now(UTC).replace(microsecond=0)
    polls = [now - timedelta(seconds=30 * k) for k in (4, 3, 2, 1)]
    rows = []
    for batch, ts in enumerate(polls):
        rows += write_poll(raw_dir, ts, batch)
        summary = follower.step()
        assert summary is not None and summary["success"], summary
        assert summary["files"] == 1
        assert follower.step() is None  # seen: no second run for the same file
    assert_indicators_match_reference(read_table(pg_clean, "price_indicators"), rows)

    runs = instance.get_runs(filters=dg.RunsFilter(tags={LIVE_TRIGGER_TAG: "live"}))
    assert len(runs) == len(polls) and all(r.is_success for r in runs)
    # the later runs were incremental: one poll each
    plan = (
        instance.get_latest_materialization_event(dg.AssetKey("price_indicators"))
        .asset_materialization.metadata["incremental_plan"]
        .value
    )
    assert "append: 1 new file(s)" in plan or polls[-1].hour != polls[0].hour
    # ... and so were the checks of the last run: they looked at the rows it recomputed
    events = instance.all_logs(
        follower.runs[-1]["run_id"], of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    )
    evaluations = {
        e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data
        for e in events
    }
    unique = evaluations["unique_coin_ts"]
    assert unique.passed
    if "append" in plan:
        assert unique.metadata["window_source"].value == "rows recomputed by this run"
        assert unique.metadata["rows"].value == 4  # one poll of 4 coins, not the whole hour

    # the observation sensor reports the same data: the automation sensor leaves it to the
    # follower, which ran a moment ago
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            RAW_PRICES_KEY,
            metadata={
                "oldest_new_ts": dg.MetadataValue.timestamp(polls[-1]),
                "newest_ts": dg.MetadataValue.timestamp(polls[-1]),
            },
        )
    )
    result = indicators_follow_raw_prices(dg.build_sensor_context(instance=instance))
    assert not result.run_requests
    assert "live follower" in result.skip_reason.skip_message

    # without a recent live run (a fresh instance: no follower), the sensor launches as before
    other = dg.DagsterInstance.ephemeral()
    other.report_runless_asset_event(
        dg.AssetMaterialization(
            RAW_PRICES_KEY,
            metadata={
                "oldest_new_ts": dg.MetadataValue.timestamp(polls[-1]),
                "newest_ts": dg.MetadataValue.timestamp(polls[-1]),
            },
        )
    )
    result = indicators_follow_raw_prices(dg.build_sensor_context(instance=other))
    assert len(result.run_requests) == 1


def test_follow_command_rejects_a_bad_poll_interval(capsys):
    from marketflow_assets.cli import main

    assert main(["follow", "--poll", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "marketflow follow: --poll must be positive, got 0"


def test_follow_process_refreshes_a_new_file_and_stops_cleanly_on_sigterm(
    data_dir, pg_clean, tmp_path
):
    """`marketflow follow` as `up` runs it: a child process; SIGTERM ends it with exit 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {
        **os.environ,
        "MARKETFLOW_POSTGRES_URL": pg_clean,
        "MARKETFLOW_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    (tmp_path / "dagster_home").mkdir()
    log = tmp_path / "follow.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "marketflow_assets.cli", "follow", "--poll", "0.2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "following" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        rows = write_poll(data_dir / "raw_prices", datetime.now(UTC) - timedelta(seconds=5), 0)
        while "succeeded" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert "succeeded" in log.read_text(), log.read_text()[-3000:]
        assert len(read_table(pg_clean, "price_indicators")) == len(rows)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_follower_lists_the_table_only_when_a_commit_landed(data_dir, monkeypatch):
    """Its look every ``--poll`` seconds is the log's mark (a stat); the files are listed after
    a commit, and at least every FULL_LOOK_SECONDS."""
    from marketflow_assets.defs.indicators import follow

    listings = []
    monkeypatch.setattr(
        follow, "list_raw_files", lambda *a, **k: listings.append(a) or list_raw_files(*a, **k)
    )
    raw_dir = data_dir / "raw_prices"
    follower = Follower(raw_dir, dg.DagsterInstance.ephemeral(), job=None)
    assert follower.step() is None and len(listings) == 1  # the first look lists (no table)
    assert follower.step() is None and len(listings) == 1  # nothing new: no listing

    now = datetime.now(UTC).replace(microsecond=0)
    write_poll(raw_dir, now - timedelta(seconds=60), 0)
    assert follower.log_moved()  # the commit moved the log's mark
    follower.known.update(f.path for f in follower.new_files())
    assert not follower.log_moved() and not follower.log_moved()
    write_poll(raw_dir, now - timedelta(seconds=30), 1)
    assert follower.log_moved() and not follower.log_moved()

    monkeypatch.setattr(follow, "FULL_LOOK_SECONDS", 0.0)
    assert follower.log_moved()  # the periodic full look, with or without a commit
