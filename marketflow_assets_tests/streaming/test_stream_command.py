"""``marketflow stream``: the streaming job of spark_streaming/kafka_streaming.py inside the
``marketflow`` process, with the same options, exit codes and exactly-once output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from marketflow_assets_tests.streaming.streaming_helpers import (
    REPO_ROOT,
    batch_logs,
    job_env,
    produce_known_set,
    read_raw,
)

pytestmark = [pytest.mark.stack, pytest.mark.timeout(420)]


def marketflow_stream(env, *args, cwd, timeout=240) -> subprocess.CompletedProcess:
    env = dict(env, PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "marketflow_assets.cli", "stream", "--master", "local[2]", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_stream_available_now_writes_the_topic_to_raw_parquet(
    kafka_bootstrap, new_topic, data_dir, job_cwd
):
    topic = new_topic("cli_stream", partitions=2)
    produced = produce_known_set(kafka_bootstrap, topic)
    env = job_env(kafka_bootstrap, topic, data_dir)

    res = marketflow_stream(env, "--available-now", cwd=job_cwd)

    assert res.returncode == 0, res.stderr[-3000:]
    df = read_raw(data_dir)
    assert df is not None, "no raw Parquet written"
    got = {(r.id, r.ts.to_pydatetime()): r.current_price for r in df.itertuples()}
    assert len(got) == len(df), "duplicate (id, ts) rows"
    assert got == produced.expected_rows
    logs = batch_logs(res.stderr)
    assert sum(b["rows_in"] for b in logs) == len(produced.records)
    assert sum(b["rejects"] for b in logs) == len(produced.expected_rejects)


def test_stream_bad_option_is_exit_2_with_one_line(kafka_bootstrap, data_dir, job_cwd):
    env = job_env(kafka_bootstrap, "crypto_prices", data_dir)
    res = marketflow_stream(env, "--trigger-seconds", "-1", cwd=job_cwd, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == (
        "marketflow stream: --trigger-seconds must be >= 0 (0: as soon as records arrive)"
    )
    assert not any("Traceback" in line for line in lines)
