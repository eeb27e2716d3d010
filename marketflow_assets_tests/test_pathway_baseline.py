"""The latency benchmark's Pathway baseline (``benchmarks/pathway_baseline.py``) writes the rows
Marketflow writes: its per-coin reducer, fed poll by poll or several polls at once, and the whole
processor, run against a real broker and PostgreSQL, give ``indicators.compute_indicators``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.pathway_baseline import TABLE, advance, pathway_python, ts_ns
from marketflow_assets import indicators as ind
from marketflow_assets_tests.helpers import (
    BASE,
    assert_same_indicator_rows,
    irregular_rows,
    unavailable,
)

VALUES = list(ind.INDICATOR_COLUMNS[3:])
REPO_ROOT = Path(__file__).resolve().parents[1]


def _frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def _advance_all(batches) -> pd.DataFrame:
    """Feed ``batches`` (lists of raw tuples) to one :func:`advance` state per coin."""
    states: dict = {}
    out = []
    for batch in batches:
        per_coin: dict = {}
        for coin, symbol, ts, price in batch:
            per_coin.setdefault(coin, []).append((ts_ns(ts.isoformat()), price, symbol))
        for coin, observations in per_coin.items():
            states[coin], rows = advance(states.get(coin), observations)
            out += [(coin, *row) for row in rows]
    columns = ["coin_id", "symbol", "t", *VALUES]
    got = pd.DataFrame(out, columns=columns)
    got.insert(2, "ts", pd.to_datetime(got.pop("t"), utc=True))
    return got


@pytest.mark.parametrize("seed", [1, 2])
def test_reducer_equals_a_full_recompute(seed):
    """Minibatches of 1-7 polls (several observations of a coin at once, in any order);
    duplicates and late observations change nothing."""
    rows = irregular_rows()
    expected = ind.compute_indicators(_frame(rows))
    rng = random.Random(seed)
    stamps = sorted({r[2] for r in rows})
    batches = []
    i = 0
    while i < len(stamps):
        n = rng.randint(1, 7)
        chosen = set(stamps[i : i + n])
        batch = [r for r in rows if r[2] in chosen]
        rng.shuffle(batch)
        if batches and rng.random() < 0.3:
            batch += rng.sample(batches[-1], min(3, len(batches[-1])))  # redelivered
        batches.append(batch)
        i += n
    got = _advance_all(batches)
    assert_same_indicator_rows(got, expected)
    # the state is bounded: what a next observation needs (within 300 s + the one before)
    state = None
    for k in range(100):
        state, _ = advance(state, [(k * 10 * 1_000_000_000, 1.0 + k, "X")])
    assert len(state[0]) == 300 // 10 + 1


def test_reducer_skips_late_and_null_prices():
    state, rows = advance(None, [(2_000_000_000, 5.0, "A"), (1_000_000_000, float("nan"), "A")])
    assert [r[1] for r in rows] == [2_000_000_000]
    state, rows = advance(state, [(1_000_000_000, 4.0, "A"), (2_000_000_000, 6.0, "A")])
    assert rows == ()  # not newer than the newest: the live path skips them too
    assert state[1] == (5.0,)


def test_processor_writes_the_rows_of_compute_indicators(
    kafka_bootstrap, new_topic, pg_clean, tmp_path
):
    """The real processor: Pathway's Kafka reader on a 3-partition topic of a real broker,
    polls of many coins (irregular times, gaps, coins coming and going), an integer price, a
    null price, a redelivered record; the rows in PostgreSQL equal compute_indicators."""
    python = pathway_python()
    if python is None:
        unavailable("no Pathway virtualenv (.venv-pathway: `make bench-pathway` creates it)")
    import psycopg2
    from kafka import KafkaProducer

    rows = irregular_rows(seed=11, coins=12, polls=60)
    rows += [("int-coin", "INT", BASE + timedelta(seconds=s), p) for s, p in ((5, 2), (70, 3))]
    records = [
        {
            "id": coin,
            "symbol": symbol,
            "name": coin.title(),
            "current_price": price,
            "market_cap": 1e9,
            "last_updated": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "schema_version": 1,
        }
        for coin, symbol, ts, price in rows
    ]
    late = dict(records[len(records) // 2])  # a redelivered record: skipped, changes nothing
    null = {**records[-1], "ts": (BASE + timedelta(seconds=90)).isoformat(), "current_price": None}
    expected = ind.compute_indicators(_frame(rows))

    conn = psycopg2.connect(pg_clean)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
    topic = new_topic("pathway", partitions=3)
    log_path = tmp_path / "pathway.log"
    argv = [python, "-m", "benchmarks.pathway_baseline", "--bootstrap", kafka_bootstrap]
    argv += ["--topic", topic, "--postgres-url", pg_clean]
    with open(log_path, "wb") as log:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    got = pd.DataFrame()
    try:
        by_ts: dict[str, list[dict]] = {}
        for record in records:
            by_ts.setdefault(record["ts"], []).append(record)
        for poll in [*by_ts.values(), [late, null]]:  # poll by poll, as ingest publishes
            for record in poll:
                value = json.dumps(record).encode()
                producer.send(topic, key=record["id"].encode(), value=value)
            producer.flush()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (TABLE,))
                if cur.fetchone()[0] is not None:
                    cur.execute(f"SELECT count(*) FROM {TABLE}")
                    if cur.fetchone()[0] >= len(expected):
                        break
            time.sleep(0.5)
        time.sleep(1.0)  # anything beyond the expected rows would show now
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {TABLE}")
            got = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
        assert proc.poll() is None, "the processor exited"
    finally:
        producer.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        conn.close()
    log_text = log_path.read_text(errors="replace")
    assert len(got) == len(expected), log_text[-3000:]
    assert "ready: consuming" in log_text
    assert " rows upserted in " in log_text
    got["ts"] = pd.to_datetime(got["ts"], utc=True)
    assert_same_indicator_rows(got, expected)
