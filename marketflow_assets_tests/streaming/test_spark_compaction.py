"""Compaction (OPTIMIZE + VACUUM) while the Spark streaming job commits to the table: rows exactly
once, and a replay of already-written polls after compaction is still deduplicated (its dedup
reads the compacted files of the version it writes on)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from marketflow_assets import compaction
from marketflow_assets.raw_dataset import list_raw_files
from marketflow_assets_tests.streaming.streaming_helpers import (
    JOB,
    batch_logs,
    job_env,
    read_raw,
    run_job,
)

pytestmark = [
    pytest.mark.stack,
    pytest.mark.timeout(900),
]  # ~90 s on an idle machine; minutes on a loaded one

START = dt.datetime(2026, 3, 1, 22, 50, tzinfo=dt.UTC)  # polls cross hours and midnight
COINS = 3


def _ts(poll: int) -> dt.datetime:
    return START + dt.timedelta(seconds=30 * poll)


def produce(bootstrap: str, topic: str, polls: range, price_offset: float = 0.0) -> dict:
    """One message per coin and poll; returns {(id, ts): price}."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, acks="all")
    expected = {}
    for poll in polls:
        ts = _ts(poll)
        for coin in range(COINS):
            price = 100.0 + coin + poll / 100 + price_offset
            msg = {
                "id": f"coin-{coin}",
                "symbol": f"c{coin}",
                "name": f"Coin {coin}",
                "current_price": price,
                "last_updated": ts.isoformat(),
                "ts": ts.isoformat(),
                "schema_version": 1,
            }
            producer.send(topic, key=msg["id"].encode(), value=json.dumps(msg).encode())
            expected[(msg["id"], ts)] = price
    producer.flush()
    producer.close()
    return expected


def visible_rows(raw_dir) -> list[tuple[str, dt.datetime, float]]:
    """Rows of one pinned table version."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = list_raw_files(raw_dir)
    if not files:
        return []
    table = pa.concat_tables(
        [pq.read_table(f.path, columns=["id", "ts", "current_price"]) for f in files]
    )
    return [(r["id"], r["ts"], r["current_price"]) for r in table.to_pylist()]


def assert_exactly_once(data_dir, expected: dict) -> None:
    rows = visible_rows(data_dir / "raw_prices")
    keys = [(i, t) for i, t, _ in rows]
    assert len(keys) == len(set(keys)), "duplicate (id, ts) rows"
    assert {(i, t): p for i, t, p in rows} == expected
    # another reader of the table (delta-rs' own scan of the newest version) sees the same
    plain = read_raw(data_dir)
    assert sorted(zip(plain["id"], plain["ts"], strict=True)) == sorted(keys)


def test_compaction_concurrent_with_streaming_then_replay(
    kafka_bootstrap, new_topic, data_dir, job_cwd
):
    topic = new_topic("compact", partitions=1)
    expected = produce(kafka_bootstrap, topic, range(0, 160))  # 22:50 .. 00:09:30, 480 rows
    env = job_env(kafka_bootstrap, topic, data_dir)
    raw_dir = data_dir / "raw_prices"
    commits = data_dir / "checkpoints" / "raw_prices" / topic / "marketflow_sink" / "batches"
    before = dt.datetime(2026, 3, 2, 3, 0, tzinfo=dt.UTC)  # every hour of the data is closed
    log = open(data_dir / "job.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            str(JOB),
            "--master",
            "local[2]",
            "--trigger-seconds",
            "0.5",
            "--max-offsets-per-trigger",
            "40",
        ],
        env=env,
        cwd=job_cwd,
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    compactions = hours = 0
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and proc.poll() is None:
            if (raw_dir / "_delta_log").is_dir():
                report = compaction.compact(raw_dir, before=before, retention_hours=1)
                compactions += 1  # races the job's commits
                hours += report.partitions_optimized
            rows = visible_rows(raw_dir)
            assert len(rows) == len({(i, t) for i, t, _ in rows}), "duplicates mid-stream"
            if len(rows) == len(expected):
                break
            time.sleep(1.0)
        assert proc.poll() is None, (data_dir / "job.log").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()
    assert len(visible_rows(raw_dir)) == len(expected), (data_dir / "job.log").read_text()[-3000:]
    batches = len(list(commits.glob("*.json")))
    assert batches >= 5 and hours > 3, (batches, hours, compactions)  # it really interleaved
    compaction.compact(raw_dir, before=before, retention_hours=1)
    assert_exactly_once(data_dir, expected)
    per_day: dict = {}
    for f in list_raw_files(raw_dir):
        per_day.setdefault(f.day, []).append(f)
    assert len(per_day) == 2 and all(len(v) == 1 for v in per_day.values())

    # Replays of already-written polls (other prices: the first written must stay), plus new
    # polls; one more run of the job, then compaction again.
    produce(kafka_bootstrap, topic, range(60, 160), price_offset=1000.0)
    expected.update(produce(kafka_bootstrap, topic, range(160, 180)))
    again = run_job(env, "--available-now", cwd=job_cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    logs = batch_logs(again.stderr)
    assert sum(b["duplicates"] for b in logs) == 100 * COINS
    assert sum(b["rows_written"] for b in logs) == 20 * COINS
    assert_exactly_once(data_dir, expected)
    compaction.compact(raw_dir, before=before, retention_hours=1)
    assert_exactly_once(data_dir, expected)
