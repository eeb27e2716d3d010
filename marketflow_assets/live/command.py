"""``marketflow live``: the live consumer as a process (``marketflow up`` supervises it)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading

from marketflow_assets.settings import ConfigError, Settings, load_live_settings

logger = logging.getLogger("marketflow.live")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--poll-timeout",
        type=float,
        default=None,
        help="seconds a Kafka poll waits (default: MARKETFLOW_LIVE_POLL_TIMEOUT, else 0.1)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from marketflow_assets.live.consumer import LiveConsumer
    from marketflow_assets.resources.postgres import PostgresResource

    live = load_live_settings()
    timeout = live.poll_timeout_s if args.poll_timeout is None else args.poll_timeout
    if timeout <= 0:
        raise ConfigError(f"--poll-timeout must be positive, got {timeout:g}")
    if not settings.kafka_bootstrap:
        raise ConfigError("marketflow live needs a running broker: set MARKETFLOW_KAFKA_BOOTSTRAP")
    url = PostgresResource(url=settings.postgres_url).resolved_url()
    stop = threading.Event()
    consumer = LiveConsumer(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        url,
        poll_timeout_s=timeout,
        max_batch_records=live.max_batch_records,
    )
    logger.info("live: %s -> price_indicators, market_movers", settings.kafka_topic)
    try:
        with _stop_on_signals(stop):
            consumer.run(stop)
    finally:
        consumer.close()
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """SIGINT/SIGTERM: finish the batch in hand, then stop."""

    def handler(signum, _frame) -> None:
        logger.info("live: received %s; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
