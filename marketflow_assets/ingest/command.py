"""``marketflow ingest``: poll a source, validate, publish to Kafka (dead letters to the DLQ).

Exit codes: 0 success, 2 bad usage/config (:class:`~marketflow_assets.settings.ConfigError`),
1 runtime failure. A finite run (``--once``, a replay file, ``--max-polls``) exits 0 only when
every poll completed and every message was acknowledged by the broker; an endless run stopped
by SIGINT/SIGTERM exits 0 after finishing the poll in hand.

Durability (:mod:`marketflow_assets.ingest.spool`): each poll is fsynced to the spool before it
is sent and stays there until its records are in raw Parquet; the spool is resent when ingest
starts, when the broker lost the topic, when the broker is back after an outage, and by
``--replay-spool``. The poll loop only polls, validates and spools
(:mod:`marketflow_assets.ingest.collector`); a sender thread
(:mod:`marketflow_assets.ingest.sender`) sends, so no broker trouble delays a poll. Failed sends
are retried (``MARKETFLOW_SEND_ATTEMPTS``, ``MARKETFLOW_SEND_BACKOFF_SECONDS``);
``--resume-file`` moves on only past polls whose every record the broker acknowledged.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from kafka.errors import KafkaError

from marketflow_assets import cli_defaults, contract, kafka_client
from marketflow_assets.ingest.coingecko import (
    PLAN_QUOTAS,
    CoinGeckoClient,
    cache_note,
    pages_for,
    quota_warnings,
)
from marketflow_assets.ingest.collector import Collector
from marketflow_assets.ingest.delivery import Delivery, open_spool
from marketflow_assets.ingest.progress import ReplayProgress
from marketflow_assets.ingest.publish import Publisher
from marketflow_assets.ingest.sender import Sender
from marketflow_assets.ingest.sources import (
    LiveSource,
    MarketSimulator,
    ReplayRecorder,
    ReplaySource,
    SimulateSource,
    resolve_source,
    utc_now,
)
from marketflow_assets.ingest.validate import format_ts, validate_poll
from marketflow_assets.runtime.signals import stop_after_work_in_hand
from marketflow_assets.settings import ConfigError, Settings

log = logging.getLogger(__name__)

#: What the first poll's validation imports on first use, imported at start-up instead:
#: ``contract.refusals``' column checks use pyarrow.compute (0.23 s to import) and pyarrow's
#: first array from a Python list imports pandas and its pandas shim (0.2-0.4 s); with
#: pyarrow.compute alone a fresh ingest still validated its first 15,000-coin poll in 0.29 s
#: against 0.09-0.10 s for the next ones (docs/PERFORMANCE.md, fifteenth round).
INGEST_PRELOAD = ("pyarrow.compute", "pandas", "pyarrow.pandas_compat")


def encoded_sample_poll(coins: int) -> Callable[[], list[bytes]]:
    """What encoding a poll of ``coins`` messages allocates, for :func:`~marketflow_assets.
    runtime.heap.warm_heap`: one simulated record, validated, encoded ``coins`` times as each
    message is (:meth:`~marketflow_assets.ingest.validate.Message.value_bytes`). Nothing is
    sent or spooled."""
    now = utc_now()
    message = validate_poll(MarketSimulator(1, 0).step(now), format_ts(now)).good[0]
    value, finite = message.value, message.finite
    return lambda: [contract.dumps(value, finite) for _ in range(coins)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``marketflow ingest`` (README "Ingest"); defaults shared with ``up``."""
    cli_defaults.add_source_options(parser)
    parser.add_argument(
        "--once",
        action="store_true",
        help="one poll (replay: the whole file, as fast as possible), then exit; exit 0 only "
        "when every record was acknowledged by the broker",
    )
    parser.add_argument(
        "--record",
        type=Path,
        help="append every poll to this replay file (its records as received from the source) "
        "once it is safe: fsynced to the spool (it then reaches raw Parquet whatever happens "
        "to the broker), or, with MARKETFLOW_SPOOL_DIR=off, acknowledged by the broker",
    )
    parser.add_argument(
        "--resume-file",
        type=Path,
        help="replay: keep the position in the file here and, when it exists, resume after it "
        "(a restarted replay publishes nothing twice)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=3,
        help="partitions of the topic and DLQ topic when they are created",
    )
    parser.add_argument("--seed", type=int, default=42, help="simulator seed")
    # test and benchmark knob: a finite run of N polls (hidden from --help)
    parser.add_argument("--max-polls", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--delivery-timeout",
        type=float,
        default=30.0,
        help="seconds the broker has to acknowledge a poll before it counts as failed",
    )
    parser.add_argument(
        "--replay-spool",
        action="store_true",
        help="resend every record of the spool (MARKETFLOW_SPOOL_DIR) that is not yet in raw "
        "Parquet, then exit (0 when the broker acknowledged them all)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0 = a free port)",
    )


def _check_args(args: argparse.Namespace, settings: Settings) -> None:
    if not settings.kafka_bootstrap:
        raise ConfigError(
            "MARKETFLOW_KAFKA_BOOTSTRAP is not set: ingest needs a Kafka broker "
            "(`marketflow up` starts an embedded one)"
        )
    if args.interval <= 0:
        raise ConfigError(f"--interval must be positive, got {args.interval:g}")
    if args.coins < 1:
        raise ConfigError(f"--coins must be at least 1, got {args.coins}")
    if args.speed < 0:
        raise ConfigError(f"--speed must be 0 or more, got {args.speed:g}")
    if args.partitions < 1:
        raise ConfigError(f"--partitions must be at least 1, got {args.partitions}")
    if getattr(args, "delivery_timeout", 30.0) <= 0:
        raise ConfigError("--delivery-timeout must be positive")
    if getattr(args, "metrics_port", None) is not None and not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be 0..65535, got {args.metrics_port}")
    if args.max_polls is not None and args.max_polls < 1:
        raise ConfigError(f"--max-polls must be at least 1, got {args.max_polls}")
    cli_defaults.check_replay_file(args)


def _make_source(args: argparse.Namespace, settings: Settings, progress: ReplayProgress | None):
    if args.source == "replay":
        speed = 0.0 if args.once else args.speed
        start_after = progress.load() if progress is not None else 0
        if start_after:
            log.info("replay: resuming after line %d of %s", start_after, args.replay_file)
        return ReplaySource(args.replay_file, speed=speed, start_after=start_after)
    if args.source == "simulate":
        return SimulateSource(
            n_coins=args.coins,
            seed=args.seed,
            interval_s=args.interval,
            once=args.once,
        )
    pages, _ = pages_for(args.coins)
    for warning in quota_warnings(settings.coingecko_api_plan, args.interval, pages):
        log.warning("%s", warning)
    note = cache_note(settings.coingecko_api_plan, args.interval)
    if note:
        log.info("%s", note)
    log.info(
        "CoinGecko %s plan at %s: top %d coins in %d page(s) every %g s",
        PLAN_QUOTAS[settings.coingecko_api_plan].label,
        settings.coingecko_api_url,
        args.coins,
        pages,
        args.interval,
    )
    client = CoinGeckoClient.from_settings(settings)
    return LiveSource(
        client,
        n_coins=args.coins,
        interval_s=args.interval,
        once=args.once,
    )


def _monitoring(args: argparse.Namespace):
    """Prometheus metrics (served when ``--metrics-port`` is given), poll-failure alerts and the
    two-edge alerts of the broker and the spool (all through the project's alert path)."""
    from marketflow_assets.monitoring.ingest_health import (
        EdgeAlert,
        PollAlerts,
        emit_to_alert_path,
    )
    from marketflow_assets.monitoring.metrics import IngestMetrics, metrics_url, serve
    from marketflow_assets.settings import load_monitoring_settings

    metrics = IngestMetrics()
    port = getattr(args, "metrics_port", None)
    if port is not None:
        try:
            bound = serve(metrics.registry, port)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port {port}: cannot listen on 127.0.0.1 ({exc})"
            ) from None
        log.info("ingest metrics on %s", metrics_url(bound))
    pacing = load_monitoring_settings()
    url = pacing.alert_webhook_url
    alerts = PollAlerts(emit_to_alert_path(url), cooldown=pacing.alert_cooldown_seconds)
    edges = {
        name: EdgeAlert(emit_to_alert_path(url, f"ingest:{name}"))
        for name in ("broker", "spool", "spool_cap", "spool_disk")
    }
    return metrics, alerts, edges


def _make_publisher(
    args: argparse.Namespace, settings: Settings, *, connect: bool = True
) -> Publisher:
    return Publisher(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        settings.dlq_topic,
        partitions=args.partitions,
        delivery_timeout_s=getattr(args, "delivery_timeout", 30.0),
        # a reconnect between send attempts waits no longer than a delivery
        connect_timeout_s=min(10.0, getattr(args, "delivery_timeout", 30.0)),
        send_attempts=settings.send_attempts,
        send_backoff_s=settings.send_backoff_seconds,
        connect=connect,
        security=settings.kafka_security,
    )


def replay_spool(args: argparse.Namespace, settings: Settings) -> int:
    """``marketflow ingest --replay-spool``: resend the spooled records not in raw Parquet."""
    if not settings.kafka_bootstrap:
        raise ConfigError(
            "MARKETFLOW_KAFKA_BOOTSTRAP is not set: --replay-spool needs the Kafka broker the "
            "Spark job reads"
        )
    if settings.spool_dir is None:
        raise ConfigError("MARKETFLOW_SPOOL_DIR is off: there is no spool to replay")
    kafka_client.preflight(settings.kafka_bootstrap, settings.kafka_security)
    spool = open_spool(settings)
    publisher = None
    try:
        publisher = _make_publisher(args, settings)
        publisher.ensure_topics()
        delivery = Delivery(publisher, spool, settings.raw_dir)
        acked, failed = delivery.start(everything=True)
        print(
            f"replay-spool: {acked} record(s) resent to {settings.kafka_topic} and acknowledged"
            + (f", {failed} NOT acknowledged (still in the spool {spool.dir})" if failed else "")
        )
        return 1 if failed else 0
    finally:
        if publisher is not None:
            publisher.close()
        spool.close()


def _connect(
    args: argparse.Namespace, settings: Settings, spool, finite: bool
) -> tuple[Publisher, str | None]:
    """The publisher, and why the broker is away (None when it answered). A one-off run, or one
    without a spool, fails fast on an unreachable broker; an endless one collects anyway: its
    polls wait in the spool for the broker."""
    try:
        publisher = _make_publisher(args, settings)
        publisher.ensure_topics()
        return publisher, None
    except (ConfigError, KafkaError) as exc:
        if finite or spool is None or isinstance(exc, kafka_client.KafkaAccessError):
            raise
        return _make_publisher(args, settings, connect=False), str(exc)


def run(
    args: argparse.Namespace,
    settings: Settings,
    stop: threading.Event | None = None,
    *,
    own_process: bool = False,
) -> int:
    """Run ``marketflow ingest``; returns the exit code (raises ConfigError for bad config).
    ``own_process``: the process runs only this (the command line), so once it is connected
    and about to poll, its start-up objects leave the garbage collector's view
    (``runtime/heap.py``)."""
    if logging.getLogger("kafka").level == logging.NOTSET:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO
    if getattr(args, "replay_spool", False):
        return replay_spool(args, settings)
    _check_args(args, settings)
    # a refused certificate or password is a configuration error: one line, before polling
    kafka_client.preflight(settings.kafka_bootstrap, settings.kafka_security)
    args.source = resolve_source(args.source, settings, log)
    stop = stop or threading.Event()
    recorder = ReplayRecorder(args.record) if args.record else None
    progress = None
    if getattr(args, "resume_file", None) and args.source == "replay":
        progress = ReplayProgress(args.resume_file, args.replay_file)
    publisher = spool = sender = None
    metrics, poll_alerts, edges = _monitoring(args)
    try:
        source = _make_source(args, settings, progress)
        spool = open_spool(settings, edges)
        finite = args.once or args.source == "replay" or args.max_polls is not None
        publisher, away = _connect(args, settings, spool, finite)
        delivery = Delivery(
            publisher,
            spool,
            settings.raw_dir,
            reconcile_s=settings.spool_reconcile_seconds,
            progress=progress,
            disk_alert=edges["spool_disk"],
        )
        collector = Collector(delivery, spool, recorder, metrics, poll_alerts)
        sender = Sender(
            delivery,
            collector.on_sent,
            backlog=delivery.backlog() if away is None else ([], ""),
            away=away,
            broker_alert=edges["broker"],
            retry_s=max(0.5, min(args.interval, 10.0)),
        )
        sender.start()  # resends what an earlier run spooled, then sends each poll in order
        log.info(
            "ingest: source=%s -> topic %s (dead letters: %s) on %s (%s)",
            args.source,
            settings.kafka_topic,
            settings.dlq_topic,
            settings.kafka_bootstrap,
            settings.kafka_security.describe(),
        )
        if own_process:
            from marketflow_assets.runtime.heap import (
                keep_freed_memory,
                settle_startup_heap,
                warm_heap,
            )

            settle_startup_heap("ingest", preload=INGEST_PRELOAD)
            if keep_freed_memory("ingest"):
                warm_heap("ingest", encoded_sample_poll(args.coins))
        with stop_after_work_in_hand(
            stop, work="the current poll", log=log, second_sigint_interrupts=True
        ):
            for poll in source.polls(stop, max_polls=args.max_polls):
                collector.take(poll, sender)
        sender.close()  # sends what is queued; a topic lost meanwhile is resent before exiting
        totals = collector.finish()
        if not finite:
            return 0
        if totals.polls == 0 and not stop.is_set():
            log.warning("ingest: the source produced no polls (empty replay file?)")
        return 0 if totals.complete() else 1
    finally:
        if sender is not None:
            # after an error or a second Ctrl-C: no long wait (what is unsent stays spooled)
            sender.close(timeout=2 * getattr(args, "delivery_timeout", 30.0))
        if publisher is not None:
            publisher.close()
        if spool is not None:
            spool.close()
        if recorder is not None:
            recorder.close()
