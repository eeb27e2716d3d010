"""`marketflow live` waits for PostgreSQL with backoff instead of exiting (issue 27): a real
connection error (nothing listens on the port) is waited out, said once, and the consumer starts
again by itself; any other error still ends the process."""

from __future__ import annotations

import logging
import threading

import psycopg2
import pytest

from marketflow_assets.live.command import run_waiting
from marketflow_assets.runtime.services import free_port


class _Consumer:
    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.closed = False

    def run(self, stop: threading.Event) -> None:
        stop.set()

    def close(self) -> None:
        self.closed = True


def test_live_waits_for_postgres_and_resumes(caplog):
    url = f"postgresql://mf@127.0.0.1:{free_port()}/mf"
    stop = threading.Event()
    attempts: list[float] = []
    made: list[_Consumer] = []

    def make() -> _Consumer:
        attempts.append(1)
        if len(attempts) <= 3:
            psycopg2.connect(url, connect_timeout=2)  # refused: PostgreSQL is away
        made.append(_Consumer(stop))
        return made[-1]

    caplog.set_level(logging.INFO, logger="marketflow.live")
    run_waiting(make, stop, backoff_s=0.05, max_backoff_s=0.1)
    assert len(attempts) == 4 and made[0].closed
    assert caplog.text.count("live: PostgreSQL unavailable") == 1  # said once
    assert "live: PostgreSQL is back after" in caplog.text


def test_other_errors_still_end_the_process():
    def make():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_waiting(make, threading.Event(), backoff_s=0.01)


def test_live_waits_for_a_broker_it_cannot_bootstrap_from(caplog):
    """A real kafka-python consumer at a port nothing listens on: "Unable to bootstrap"
    (KafkaTimeoutError) is waited out like any broker outage."""
    from kafka import KafkaConsumer

    bootstrap = f"127.0.0.1:{free_port()}"
    stop = threading.Event()
    attempts: list[int] = []

    def make() -> _Consumer:
        attempts.append(1)
        if len(attempts) <= 2:
            KafkaConsumer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=300)
        return _Consumer(stop)

    caplog.set_level(logging.INFO, logger="marketflow.live")
    run_waiting(make, stop, backoff_s=0.05, max_backoff_s=0.1)
    assert len(attempts) == 3
    assert caplog.text.count("live: Kafka unavailable") == 1
    assert "live: Kafka is back after" in caplog.text


def test_live_waits_out_a_broker_that_stops_answering(tmp_path, caplog):
    """A real broker frozen (SIGSTOP) with a metadata request in flight: kafka-python gives up on
    it after its request timeout (RequestTimedOutError, what a live process stopped for two
    minutes met on waking up); that is waited out like an outage, not a reason to exit."""
    import os
    import signal

    from kafka import KafkaConsumer
    from kafka.errors import RequestTimedOutError

    from marketflow_assets.runtime.services import EmbeddedKafka

    broker = EmbeddedKafka(tmp_path / "tansu")
    bootstrap = broker.start()
    stop = threading.Event()
    raised: list[BaseException] = []

    def make() -> _Consumer:
        if not raised:
            consumer = KafkaConsumer(
                bootstrap_servers=bootstrap, request_timeout_ms=1500, fetch_max_wait_ms=100
            )
            try:
                consumer.topics()  # answered
                os.kill(broker.proc.pid, signal.SIGSTOP)
                try:
                    consumer.topics()  # not answered
                except RequestTimedOutError as exc:
                    raised.append(exc)
                    raise
                finally:
                    os.kill(broker.proc.pid, signal.SIGCONT)
            finally:
                consumer.close()
        return _Consumer(stop)

    caplog.set_level(logging.INFO, logger="marketflow.live")
    try:
        run_waiting(make, stop, backoff_s=0.05, max_backoff_s=0.1)
    finally:
        broker.stop()
    assert len(raised) == 1
    assert caplog.text.count("live: Kafka unavailable (") == 1
    assert "RequestTimedOutError" in caplog.text or "timed out" in caplog.text
    assert "live: Kafka is back after" in caplog.text
