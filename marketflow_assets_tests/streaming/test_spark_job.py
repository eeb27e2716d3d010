"""The streaming job end to end, as a subprocess: exact rows and rejects, idempotent re-runs,
SIGKILL mid-way + restart (via spark-submit), config errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from marketflow_assets_tests.streaming.streaming_helpers import (
    JOB,
    batch_logs,
    job_env,
    produce_known_set,
    raw_files,
    read_raw,
    read_rejects,
    run_job,
)

pytestmark = [pytest.mark.stack, pytest.mark.timeout(420)]


def assert_exact(data_dir, produced) -> None:
    """Parquet holds exactly the expected (id, ts) rows, first-sent version, and the rejects."""
    df = read_raw(data_dir)
    assert df is not None, "no raw Parquet written"
    got = [(r.id, r.ts.to_pydatetime()) for r in df.itertuples()]
    assert len(got) == len(set(got)), "duplicate (id, ts) rows"
    assert set(got) == set(produced.expected_rows)
    prices = {(r.id, r.ts.to_pydatetime()): r.current_price for r in df.itertuples()}
    assert prices == produced.expected_rows
    assert all(str(ts.date()) == d for (_, ts), d in zip(got, df["date"], strict=True))
    rej = read_rejects(data_dir)
    got_rejects = (
        {}
        if rej is None
        else {(int(r.partition), int(r.offset)): r.reason for r in rej.itertuples()}
    )
    assert got_rejects == produced.expected_rejects


def test_available_now_writes_exactly_the_expected_rows_and_rerun_adds_nothing(
    kafka_bootstrap, new_topic, data_dir, job_cwd
):
    topic = new_topic("job", partitions=2)
    produced = produce_known_set(kafka_bootstrap, topic)
    assert len(produced.expected_rejects) == 20
    env = job_env(kafka_bootstrap, topic, data_dir)

    first = run_job(env, "--available-now", cwd=job_cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    assert_exact(data_dir, produced)
    logs = batch_logs(first.stderr)
    assert logs
    assert sum(b["rows_in"] for b in logs) == len(produced.records)
    assert sum(b["rows_written"] for b in logs) == len(produced.expected_rows)
    assert sum(b["rejects"] for b in logs) == len(produced.expected_rejects)
    assert logs[-1]["lag"] == 0

    files = raw_files(data_dir)
    second = run_job(env, "--available-now", cwd=job_cwd)
    assert second.returncode == 0, second.stderr[-3000:]
    assert batch_logs(second.stderr) == []
    assert raw_files(data_dir) == files
    assert_exact(data_dir, produced)


def test_sigkill_midway_then_restart_with_spark_submit(
    kafka_bootstrap, new_topic, data_dir, job_cwd
):
    topic = new_topic("kill", partitions=2)
    produced = produce_known_set(kafka_bootstrap, topic, coins=6, polls=5)
    env = job_env(kafka_bootstrap, topic, data_dir)
    commits = data_dir / "checkpoints" / "raw_prices" / topic / "marketflow_sink" / "batches"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(JOB),
            "--master",
            "local[2]",
            "--trigger-seconds",
            "0.5",
            "--max-offsets-per-trigger",
            "12",
        ],
        env=env,
        cwd=job_cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if commits.is_dir() and len(list(commits.glob("*.json"))) >= 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert len(list(commits.glob("*.json"))) >= 1, "job made no progress"
        time.sleep(0.7)  # land somewhere inside a later batch
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM, no clean-up at all
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    before = read_raw(data_dir)
    written_before = 0 if before is None else len(before)
    assert written_before < len(produced.expected_rows), "killed too late: nothing left to do"

    again = run_job(env, "--available-now", cwd=job_cwd, submit=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_exact(data_dir, produced)
    # no commit files of our own: the table's log is the only record of what was written
    assert not (commits.parent / "pending").exists() and not (commits.parent / "commits").exists()


def test_missing_bootstrap_is_a_one_line_config_error(data_dir, job_cwd):
    env = job_env(None, "crypto_prices", data_dir)
    res = run_job(env, "--available-now", cwd=job_cwd, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "MARKETFLOW_KAFKA_BOOTSTRAP" in lines[0]


def test_bad_option_is_exit_2(kafka_bootstrap, data_dir, job_cwd):
    env = job_env(kafka_bootstrap, "crypto_prices", data_dir)
    res = run_job(env, "--trigger-seconds", "0", cwd=job_cwd, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("kafka_streaming: --trigger-seconds")


def test_unreachable_broker_is_a_one_line_runtime_failure(data_dir, job_cwd):
    from marketflow_assets.runtime.services import free_port

    env = job_env(f"127.0.0.1:{free_port()}", "crypto_prices", data_dir)
    res = run_job(env, "--available-now", cwd=job_cwd, timeout=90)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Kafka" in lines[0], res.stderr
