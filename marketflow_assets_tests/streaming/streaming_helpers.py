"""Helpers for the Spark streaming tests: a known message set, the job as a subprocess, readers."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB = REPO_ROOT / "spark_streaming" / "kafka_streaming.py"
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


@dataclass
class Produced:
    """What was produced, and what the job must make of it."""

    records: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset)
    expected_rows: dict[tuple[str, dt.datetime], float] = field(default_factory=dict)
    expected_rejects: dict[tuple[int, int], str] = field(default_factory=dict)


def _ts(poll: int) -> dt.datetime:
    # Polls straddle midnight so that two `date` partitions are written.
    return dt.datetime(2026, 3, 1, 23, 58, tzinfo=dt.UTC) + dt.timedelta(seconds=30 * poll)


def _iso(ts: dt.datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


GARBAGE: list[tuple[bytes, str]] = [
    (b"this is not json", "invalid_json"),
    (b"[1, 2, 3]", "invalid_json"),
    (b"", "empty_value"),
    (
        json.dumps({"symbol": "x", "ts": "2026-03-01T23:58:00Z", "current_price": 1}).encode(),
        "missing_id",
    ),
    (json.dumps({"id": "ghost", "current_price": 1.0}).encode(), "missing_ts"),
    (json.dumps({"id": "ghost", "ts": "yesterday", "current_price": 1.0}).encode(), "invalid_ts"),
    (json.dumps({"id": "ghost", "ts": "2026-03-01T23:58:00Z"}).encode(), "missing_price"),
    (
        json.dumps(
            {"id": "ghost", "ts": "2026-03-01T23:58:00Z", "current_price": "cheap"}
        ).encode(),
        "invalid_price",
    ),
    (
        json.dumps({"id": "ghost", "ts": "2026-03-01T23:58:00Z", "current_price": 0}).encode(),
        "non_positive_price",
    ),
    (
        json.dumps({"id": "ghost", "ts": "2026-03-01T23:58:00Z", "current_price": -5.5}).encode(),
        "non_positive_price",
    ),
]


def message(coin: int, poll: int, price: float) -> dict:
    ts = _ts(poll)
    return {
        "id": f"coin-{coin:02d}",
        "symbol": f"c{coin}",
        "name": f"Coin {coin}",
        "current_price": price,
        "market_cap": 1e9 + coin,
        "market_cap_rank": coin + 1,
        "total_volume": 5e6,
        "high_24h": price * 1.1,
        "low_24h": price * 0.9,
        "price_change_percentage_24h": 1.5,
        "circulating_supply": 21e6,
        "last_updated": _iso(ts - dt.timedelta(seconds=7)),
        "ts": _iso(ts),
        "schema_version": 1,
    }


def produce_known_set(
    bootstrap: str, topic: str, coins: int = 8, polls: int = 6, garbage: bool = True
) -> Produced:
    """Produce polls of ``coins`` messages, re-sent duplicates (different price: the first sent
    must win) and every kind of garbage; return what the Parquet must contain afterwards.

    Sent with linger so that the broker receives multi-record batches: on Tansu the last batch
    of each partition is then beyond the reported end offset.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=100, acks="all")
    out = Produced()
    futures = []
    for poll in range(polls):
        for coin in range(coins):
            msg = message(coin, poll, 100.0 + coin + poll / 10)
            key = msg["id"].encode()
            futures.append((producer.send(topic, key=key, value=json.dumps(msg).encode()), None))
            out.expected_rows[(msg["id"], _ts(poll))] = msg["current_price"]
            if coin % 3 == 0:  # a producer retry / replay of the same (id, ts), later offset
                dup = dict(msg, current_price=msg["current_price"] + 1000)
                futures.append(
                    (producer.send(topic, key=key, value=json.dumps(dup).encode()), None)
                )
        if garbage and poll in (1, polls - 1):
            for value, reason in GARBAGE:
                futures.append((producer.send(topic, key=b"bad", value=value), reason))
        producer.flush()
    for fut, reason in futures:
        meta = fut.get(timeout=30)
        out.records.append((meta.partition, meta.offset))
        if reason:
            out.expected_rejects[(meta.partition, meta.offset)] = reason
    producer.close()
    return out


def read_raw(data_dir: Path):
    """The ``raw_prices`` Delta table (newest version) as a pandas frame, ``date`` as ISO text;
    None when there is no table."""
    from deltalake import DeltaTable

    path = data_dir / "raw_prices"
    if not DeltaTable.is_deltatable(str(path)):
        return None
    df = DeltaTable(str(path)).to_pandas()
    df["date"] = df["date"].astype(str)
    return df


def read_rejects(data_dir: Path):
    from deltalake import DeltaTable

    path = data_dir / "raw_prices_rejects"
    if not DeltaTable.is_deltatable(str(path)):
        return None
    return DeltaTable(str(path)).to_pandas()


def raw_files(data_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(data_dir)) for p in data_dir.glob("raw_prices*/**/*") if p.is_file()
    )


def job_env(bootstrap: str | None, topic: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETFLOW_")}
    env.update(
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        MARKETFLOW_KAFKA_TOPIC=topic,
        MARKETFLOW_DATA_DIR=str(data_dir),
        MARKETFLOW_SPARK_SHUFFLE_PARTITIONS="2",
    )
    if bootstrap:
        env["MARKETFLOW_KAFKA_BOOTSTRAP"] = bootstrap
    return env


def run_job(
    env: dict[str, str], *args: str, cwd: Path, timeout: float = 240, submit: bool = False
) -> subprocess.CompletedProcess:
    if submit:
        cmd = [str(SPARK_SUBMIT), "--master", "local[2]", str(JOB), *args]
    else:
        cmd = [sys.executable, str(JOB), "--master", "local[2]", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def batch_logs(stderr: str) -> list[dict]:
    """The structured per-micro-batch log lines of a run."""
    out = []
    for line in stderr.splitlines():
        if "micro-batch {" in line:
            out.append(json.loads(line.split("micro-batch ", 1)[1]))
    return out
