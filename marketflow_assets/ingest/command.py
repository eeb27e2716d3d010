"""``marketflow ingest``: poll a source, validate, publish to Kafka (dead letters to the DLQ).

Exit codes: 0 success, 2 bad usage/config (:class:`~marketflow_assets.settings.ConfigError`),
1 runtime failure. A finite run (``--once``, a replay file, ``--max-polls``) exits 0 only when
every poll completed and every message was acknowledged by the broker; an endless run stopped
by SIGINT/SIGTERM exits 0 after finishing the poll in hand.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

from marketflow_assets.ingest.coingecko import (
    PLAN_QUOTAS,
    CoinGeckoClient,
    cache_note,
    pages_for,
    quota_warnings,
)
from marketflow_assets.ingest.progress import ReplayProgress
from marketflow_assets.ingest.publish import Publisher
from marketflow_assets.ingest.sources import (
    LiveSource,
    ReplayRecorder,
    ReplaySource,
    SimulateSource,
)
from marketflow_assets.ingest.validate import validate_poll
from marketflow_assets.runtime.signals import stop_after_work_in_hand
from marketflow_assets.settings import ConfigError, Settings

log = logging.getLogger(__name__)

SOURCES = ("coingecko", "replay", "simulate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``marketflow ingest`` (README "Ingest")."""
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="coingecko",
        help="live CoinGecko, a replay file, or the seeded simulator (default: coingecko)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="one poll (replay: the whole file, as fast as possible), then exit; exit 0 only "
        "when every record was acknowledged by the broker",
    )
    parser.add_argument(
        "--interval", type=float, default=30.0, help="seconds between poll starts (default 30)"
    )
    parser.add_argument(
        "--coins", type=int, default=100, help="top-N coins by market cap per poll (default 100)"
    )
    parser.add_argument(
        "--replay-file", type=Path, help="replay file (JSON Lines) for --source replay"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="replay speed: multiplies real time between recorded polls; 0 = no waiting",
    )
    parser.add_argument(
        "--record",
        type=Path,
        help="append every poll to this replay file once the broker has acknowledged it "
        "(the records it acknowledged, as received from the source)",
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
        help="partitions of the topic and DLQ topic when they are created (default 3)",
    )
    parser.add_argument("--seed", type=int, default=42, help="simulator seed (default 42)")
    parser.add_argument(
        "--max-polls", type=int, default=None, help="stop after this many polls (default: no limit)"
    )
    parser.add_argument(
        "--delivery-timeout",
        type=float,
        default=30.0,
        help="seconds the broker has to acknowledge a poll before it counts as failed (30)",
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
    if args.source == "replay":
        if args.replay_file is None:
            raise ConfigError("--source replay needs --replay-file PATH")
        if not Path(args.replay_file).is_file():
            raise ConfigError(f"--replay-file {args.replay_file}: no such file")


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
    """Prometheus metrics (served when ``--metrics-port`` is given) and poll-failure alerts."""
    from marketflow_assets.monitoring.ingest_health import PollAlerts, emit_to_alert_path
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
    alerts = PollAlerts(
        emit_to_alert_path(pacing.alert_webhook_url), cooldown=pacing.alert_cooldown_seconds
    )
    return metrics, alerts


def run(args: argparse.Namespace, settings: Settings, stop: threading.Event | None = None) -> int:
    """Run ``marketflow ingest``; returns the exit code (raises ConfigError for bad config)."""
    _check_args(args, settings)
    if logging.getLogger("kafka").level == logging.NOTSET:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO
    stop = stop or threading.Event()
    recorder = ReplayRecorder(args.record) if args.record else None
    progress = None
    if getattr(args, "resume_file", None) and args.source == "replay":
        progress = ReplayProgress(args.resume_file, args.replay_file)
    publisher = None
    metrics, poll_alerts = _monitoring(args)
    try:
        source = _make_source(args, settings, progress)
        publisher = Publisher(
            settings.kafka_bootstrap,
            settings.kafka_topic,
            settings.dlq_topic,
            partitions=args.partitions,
            delivery_timeout_s=getattr(args, "delivery_timeout", 30.0),
        )
        publisher.ensure_topics()
        log.info(
            "ingest: source=%s -> topic %s (dead letters: %s) on %s",
            args.source,
            settings.kafka_topic,
            settings.dlq_topic,
            settings.kafka_bootstrap,
        )
        finite = args.once or args.source == "replay" or args.max_polls is not None
        totals = {"polls": 0, "failed_polls": 0, "good": 0, "bad": 0, "unacked": 0}
        last_updates: dict[str | None, str] = {}  # coin id -> last_updated of the previous poll
        with stop_after_work_in_hand(
            stop, work="the current poll", log=log, second_sigint_interrupts=True
        ):
            for poll in source.polls(stop, max_polls=args.max_polls):
                totals["polls"] += 1
                if poll.records is None:
                    totals["failed_polls"] += 1
                    log.error(
                        "poll %s failed and was skipped: %s", poll.ts or poll.label, poll.error
                    )
                    metrics.poll_failed()
                    poll_alerts.poll(False, f"the source failed: {poll.error}")
                    if progress is not None and poll.line is not None:
                        progress.save(poll.line)  # a broken line stays broken: not retried
                    continue
                started = time.monotonic()
                validated = validate_poll(poll.records, poll.ts)
                for message in validated.bad:
                    log.warning(
                        "poll %s: rejected %s: %s",
                        poll.ts,
                        message.key or "record without id",
                        message.value["reason"],
                    )
                result = publisher.publish(validated)
                # Recorded only once acknowledged, and never twice (a restarted replay may
                # publish the last poll of the previous run again: it was recorded then).
                if recorder is not None and result.acked and poll.ts != recorder.last_ts:
                    recorder.append(poll.ts, [m.raw for m in result.acked])
                if progress is not None and poll.line is not None:
                    progress.save(poll.line)
                totals["good"] += result.good_acked
                totals["bad"] += result.bad_acked
                totals["unacked"] += len(result.failures)
                for failure in result.failures[:5]:
                    log.error("poll %s: send failed: %s", poll.ts, failure)
                metrics.poll_published(
                    result.good_acked,
                    result.bad_acked,
                    len(result.failures),
                    time.monotonic() - started,
                    time.time(),
                )
                if result.failures:
                    poll_alerts.poll(
                        False,
                        f"{len(result.failures)} message(s) not acknowledged by Kafka at "
                        f"{settings.kafka_bootstrap} ({result.failures[0]})",
                        broker=True,
                    )
                else:
                    poll_alerts.poll(True)
                updates = {m.key: m.value["last_updated"] for m in validated.good}
                unchanged = sum(1 for k, v in updates.items() if last_updates.get(k) == v)
                last_updates = updates
                log.info(
                    "poll %s: %d good, %d bad -> %d + %d acknowledged%s%s (%.2f s)",
                    poll.ts,
                    len(validated.good),
                    len(validated.bad),
                    result.good_acked,
                    result.bad_acked,
                    f", {len(result.failures)} NOT acknowledged" if result.failures else "",
                    f"; {unchanged} coin(s) unchanged since the previous poll" if unchanged else "",
                    time.monotonic() - started,
                )
                if updates and unchanged == len(updates):
                    log.info(
                        "poll %s: same data as the previous poll (a cached CoinGecko answer); "
                        "published again with the new ts",
                        poll.ts,
                    )
        log.info(
            "ingest finished: %d poll(s), %d failed; %d messages and %d dead letters "
            "acknowledged, %d not acknowledged",
            totals["polls"],
            totals["failed_polls"],
            totals["good"],
            totals["bad"],
            totals["unacked"],
        )
        if not finite:
            return 0
        if totals["polls"] == 0 and not stop.is_set():
            log.warning("ingest: the source produced no polls (empty replay file?)")
        return 1 if (totals["failed_polls"] or totals["unacked"]) else 0
    finally:
        if publisher is not None:
            publisher.close()
        if recorder is not None:
            recorder.close()
