"""Helpers of the live-path tests: publish polls to a real topic, run the consumer, wait."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg2

from marketflow_assets.live.consumer import LiveConsumer
from marketflow_assets.live.store import INDICATOR_COLS


def message(coin: str, symbol: str, ts: datetime, price: float) -> bytes:
    """A topic message as the ingest publishes it (SPEC: CoinGecko fields + ts)."""
    return json.dumps(
        {
            "id": coin,
            "symbol": symbol,
            "name": coin.title(),
            "current_price": price,
            "last_updated": ts.isoformat().replace("+00:00", "Z"),
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "schema_version": 1,
        }
    ).encode()


def producer(bootstrap: str):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)


def publish(bootstrap: str, topic: str, rows: Iterable[tuple], prod=None) -> int:
    """Publish rows ``(coin, symbol, ts, price)`` in the given order (key = coin); returns how
    many, after every one was acknowledged."""
    own = prod is None
    prod = prod or producer(bootstrap)
    n = 0
    for coin, symbol, ts, price in rows:
        prod.send(topic, key=coin.encode(), value=message(coin, symbol, ts, price))
        n += 1
    prod.flush()
    if own:
        prod.close()
    return n


def in_poll_order(rows: list[tuple]) -> list[tuple]:
    return sorted(rows, key=lambda r: (r[2], r[0]))


def stored_offsets(url: str, topic: str) -> dict[int, int]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('live_offsets') IS NOT NULL")
        if not cur.fetchone()[0]:
            return {}
        cur.execute("SELECT partition, next_offset FROM live_offsets WHERE topic = %s", (topic,))
        return dict(cur.fetchall())


def query(url: str, sql: str, params=()) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def consumed_all(url: str, topic: str, total: int) -> bool:
    return sum(stored_offsets(url, topic).values()) >= total


@contextlib.contextmanager
def running_consumer(bootstrap: str, topic: str, url: str, **kwargs) -> Iterator[LiveConsumer]:
    """The live consumer in a thread of this process (stopped and closed on exit)."""
    consumer = LiveConsumer(bootstrap, topic, url, **kwargs)
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="live-consumer", daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(30)
        consumer.close()
    if errors:
        raise errors[0]


def indicator_rows(ts: pd.Timestamp, changes: list[float | None], seed: int) -> pd.DataFrame:
    """Indicator rows of one snapshot ``ts``: ``change_5min`` as given (None: NULL), the
    other indicators random."""
    rng = np.random.default_rng(seed)
    n = len(changes)
    frame = pd.DataFrame(
        {
            # coin ids not in index order, so ties are broken by id, not by insertion
            "coin_id": [f"coin-{(i * 37) % n:03d}" for i in range(n)],
            "symbol": [f"s{i}" for i in range(n)],
            "ts": ts,
            "price": rng.uniform(1, 100, n),
            "change_5min": pd.array(changes, dtype="Float64").astype("float64"),
        }
    )
    for col in INDICATOR_COLS:
        if col not in frame:
            frame[col] = rng.uniform(0, 1, n)
    return frame
