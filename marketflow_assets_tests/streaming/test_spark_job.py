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
            "0",  # as records arrive (as under `up`): batches back to back through the backlog
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


def test_a_backlog_beyond_the_default_cap_is_caught_up_in_bounded_batches(
    kafka_bootstrap, new_topic, data_dir, job_cwd
):
    """A catch-up after an outage: more records than the default cap per micro-batch
    (MARKETFLOW_SPARK_MAX_OFFSETS_PER_TRIGGER) wait in the topic. The job, with its default
    driver heap (MARKETFLOW_SPARK_DRIVER_MEMORY), reads them in several bounded micro-batches,
    each committed once; every record lands, none twice."""
    import json

    from confluent_kafka import Producer

    from marketflow_assets.settings import DEFAULT_SPARK_MAX_OFFSETS
    from marketflow_assets_tests.streaming.streaming_helpers import _ts, message

    topic = new_topic("catchup", partitions=2)
    coins, polls = 2000, DEFAULT_SPARK_MAX_OFFSETS // 2000 * 2 + 2  # 2 caps and 2 polls
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50, "acks": "all"})
    expected = {}
    for poll in range(polls):
        for coin in range(coins):
            msg = dict(message(coin, poll, 1.0 + coin + poll / 100), id=f"coin-{coin:05d}")
            producer.produce(topic, key=msg["id"].encode(), value=json.dumps(msg).encode())
            expected[(msg["id"], _ts(poll))] = msg["current_price"]
            producer.poll(0)
    assert producer.flush(60) == 0
    assert len(expected) > 2 * DEFAULT_SPARK_MAX_OFFSETS

    env = job_env(kafka_bootstrap, topic, data_dir)
    done = run_job(env, "--available-now", cwd=job_cwd, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = batch_logs(done.stderr)
    assert len(logs) >= 3, [b["rows_in"] for b in logs]
    assert all(0 < b["rows_in"] <= DEFAULT_SPARK_MAX_OFFSETS for b in logs)
    assert sum(b["rows_written"] for b in logs) == len(expected)
    assert logs[-1]["lag"] == 0
    df = read_raw(data_dir)
    got = {(r.id, r.ts.to_pydatetime()): r.current_price for r in df.itertuples()}
    assert len(df) == len(expected) and got == expected


def test_missing_bootstrap_is_a_one_line_config_error(data_dir, job_cwd):
    env = job_env(None, "crypto_prices", data_dir)
    res = run_job(env, "--available-now", cwd=job_cwd, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "MARKETFLOW_KAFKA_BOOTSTRAP" in lines[0]


def test_bad_option_is_exit_2(kafka_bootstrap, data_dir, job_cwd):
    env = job_env(kafka_bootstrap, "crypto_prices", data_dir)
    res = run_job(env, "--trigger-seconds", "-1", cwd=job_cwd, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("kafka_streaming: --trigger-seconds")


def test_unreachable_broker_is_a_one_line_runtime_failure(data_dir, job_cwd):
    from marketflow_assets.runtime.services import free_port

    env = job_env(f"127.0.0.1:{free_port()}", "crypto_prices", data_dir)
    res = run_job(env, "--available-now", cwd=job_cwd, timeout=90)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Kafka" in lines[0], res.stderr
