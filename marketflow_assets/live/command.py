"""``marketflow live``: the live consumer as a process (``marketflow up`` supervises it)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import time

from marketflow_assets import kafka_client
from marketflow_assets.runtime.signals import stop_after_work_in_hand
from marketflow_assets.settings import (
    ConfigError,
    Settings,
    load_live_settings,
    load_monitoring_settings,
)

logger = logging.getLogger("marketflow.live")

#: What the consumer imports on first use: imported before the start-up heap is settled.
LIVE_PRELOAD = (
    "kafka.consumer",
    "confluent_kafka",
    "psycopg2",
    "pyarrow.compute",
    "pyarrow.csv",
    "pyarrow.json",  # the record contract's bulk reader (contract._read_arrow)
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--poll-timeout",
        type=float,
        default=None,
        help="seconds each Kafka fetch waits at the broker for records "
        "(default: MARKETFLOW_LIVE_POLL_TIMEOUT, else 0.1)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from marketflow_assets.live.consumer import LiveConsumer
    from marketflow_assets.resources.postgres import PostgresResource
    from marketflow_assets.runtime.heap import (
        keep_freed_memory,
        set_arrow_allocator,
        settle_startup_heap,
    )

    live = load_live_settings()
    timeout = live.poll_timeout_s if args.poll_timeout is None else args.poll_timeout
    if timeout <= 0:
        raise ConfigError(f"--poll-timeout must be positive, got {timeout:g}")
    if not settings.kafka_bootstrap:
        raise ConfigError("marketflow live needs a running broker: set MARKETFLOW_KAFKA_BOOTSTRAP")
    url = PostgresResource(url=settings.postgres_url).resolved_url()
    stop = threading.Event()
    settled: list[bool] = []

    def consumer() -> LiveConsumer:
        # a refused certificate or password is a configuration error: one line, exit 2 (also
        # after an outage: not a wait)
        kafka_client.preflight(settings.kafka_bootstrap, settings.kafka_security)
        if not settled:  # once, with the configuration known to be good
            settle_startup_heap("live", preload=LIVE_PRELOAD)
            set_arrow_allocator("live", live.arrow_memory_pool)
            keep_freed_memory("live")
            settled.append(True)
        return LiveConsumer(
            settings.kafka_bootstrap,
            settings.kafka_topic,
            url,
            poll_timeout_s=timeout,
            max_batch_records=live.max_batch_records,
            alerts_file=settings.price_alerts_file,
            webhook_url=load_monitoring_settings().alert_webhook_url,
            security=settings.kafka_security,
        )

    logger.info("live: %s -> price_indicators, market_movers", settings.kafka_topic)
    with stop_after_work_in_hand(stop, work="the batch in hand", log=logger):
        run_waiting(consumer, stop)
    return 0


def _unavailable(exc: BaseException) -> str | None:
    """Which service a connection error is about ("PostgreSQL", "Kafka"), else None."""
    import psycopg2
    from kafka import errors

    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return "PostgreSQL"
    # KafkaTimeoutError: "Unable to bootstrap" (the broker is down) and metadata that does not
    # come; RequestTimedOutError: a request the broker did not answer within its timeout (the
    # broker frozen, or this process stopped for longer - SIGSTOP, a paused VM - with the
    # request in flight): each means the broker is not there to serve us now
    names = (
        "NoBrokersAvailable",
        "KafkaConnectionError",
        "MetadataEmptyBrokerList",
        "KafkaTimeoutError",
        "RequestTimedOutError",
    )
    if isinstance(exc, tuple(getattr(errors, n) for n in names if hasattr(errors, n))):
        return "Kafka"
    return None


def run_waiting(
    make_consumer, stop: threading.Event, backoff_s: float = 1.0, max_backoff_s: float = 30.0
) -> None:
    """Run a consumer from ``make_consumer()`` until ``stop``; when PostgreSQL or the broker is
    unavailable (a connection error), wait with exponential backoff, saying so once, and start a
    new consumer when it is back: state and offsets are read again from what was committed, as
    after a restart. Any other error ends the process (the supervisor restarts it)."""
    waiting: tuple[str, float] | None = None  # (service, since when)
    delay = backoff_s
    while not stop.is_set():
        consumer = None
        try:
            consumer = make_consumer()
            if waiting is not None:
                logger.info(
                    "live: %s is back after %.0f s; resuming from the committed offsets",
                    waiting[0],
                    time.monotonic() - waiting[1],
                )
                waiting, delay = None, backoff_s
            consumer.run(stop)
        except Exception as exc:
            service = _unavailable(exc)
            if service is None:
                raise
            if waiting is None:
                waiting = (service, time.monotonic())
                reason = " ".join(str(exc).split())[:200] or type(exc).__name__
                logger.warning(
                    "live: %s unavailable (%s); waiting for it (retrying with backoff up to "
                    "%.0f s)",
                    service,
                    reason,
                    max_backoff_s,
                )
            stop.wait(delay)
            delay = min(max_backoff_s, delay * 2)
        finally:
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close()
