"""Prometheus metrics of the ingest loop and the Spark streaming job (prometheus-client).

Each process owns one :class:`~prometheus_client.CollectorRegistry` (so a test can build
several side by side) and serves it with :func:`serve` on ``127.0.0.1:<port>/metrics``
(``--metrics-port``; ``0`` picks a free port). The names below are fixed by SPEC; the README's
"Monitoring" section says what each one means.

Ingest (``marketflow ingest --metrics-port P``):

* ``marketflow_ingest_polls_total{outcome="ok"|"failed"}`` — a poll is *failed* when the source
  gave nothing (HTTP errors, timeouts, bad JSON) or when any of its messages was not
  acknowledged by the broker (broker down);
* ``marketflow_ingest_records_total{result="published"|"dead_lettered"}`` — messages acknowledged
  on the price topic / on the dead-letter topic;
* ``marketflow_ingest_send_failures_total`` — messages the broker did not acknowledge;
* ``marketflow_ingest_poll_seconds`` (histogram) — validation + publish time of a poll;
* ``marketflow_ingest_last_success_timestamp_seconds`` — Unix time of the last ok poll.

Streaming job (``kafka_streaming.py --metrics-port P``):

* ``marketflow_stream_rows_total{result="written"|"duplicate"|"rejected"}`` — per committed batch;
* ``marketflow_stream_batches_total`` and ``marketflow_stream_batch_seconds`` (histogram) — the
  sink's time per micro-batch (compare with the trigger interval,
  ``marketflow_stream_trigger_seconds``);
* ``marketflow_stream_lag_records{partition}`` — records in the topic beyond the job's last
  committed offsets (true end offset, see :mod:`marketflow_assets.monitoring.lag`);
* ``marketflow_stream_lag_seconds`` — age of the oldest record not yet written (0 without lag);
* ``marketflow_stream_end_to_end_seconds`` (histogram) — per batch, commit time minus the newest
  poll ``ts`` in it: the poll-to-Parquet latency;
* ``marketflow_stream_last_commit_timestamp_seconds`` — Unix time of the last committed batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_SECONDS_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300)


def serve(registry: CollectorRegistry, port: int) -> int:
    """Serve ``registry`` at ``http://127.0.0.1:<port>/metrics``; returns the bound port."""
    server, _thread = start_http_server(port, addr=HOST, registry=registry)
    return int(server.server_address[1])


def metrics_url(port: int) -> str:
    return f"http://{HOST}:{port}/metrics"


@dataclass
class IngestMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.polls = Counter(
            "marketflow_ingest_polls",
            "Polls by outcome: ok; spooled (taken while the broker was away: they wait in the "
            "spool and are sent when it is back); failed (no data from the source, or not all "
            "acknowledged).",
            ["outcome"],
            registry=r,
        )
        self.records = Counter(
            "marketflow_ingest_records",
            "Messages acknowledged by the broker: published (price topic) or dead_lettered (DLQ).",
            ["result"],
            registry=r,
        )
        self.send_failures = Counter(
            "marketflow_ingest_send_failures",
            "Messages the broker did not acknowledge.",
            registry=r,
        )
        self.poll_seconds = Histogram(
            "marketflow_ingest_poll_seconds",
            "Validation and publish time of one poll.",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "marketflow_ingest_last_success_timestamp_seconds",
            "Unix time of the last poll whose every message was acknowledged.",
            registry=r,
        )
        for outcome in ("ok", "spooled", "failed"):
            self.polls.labels(outcome)  # export zeros from the start
        for result in ("published", "dead_lettered"):
            self.records.labels(result)

    def poll_failed(self) -> None:
        self.polls.labels("failed").inc()

    def poll_published(
        self,
        published: int,
        dead_lettered: int,
        failures: int,
        seconds: float,
        now: float,
        spooled: bool = False,
    ) -> None:
        """One poll handed over: ``spooled`` when its records wait in the spool for the broker
        (not a failure: they are sent when it is back)."""
        self.records.labels("published").inc(published)
        self.records.labels("dead_lettered").inc(dead_lettered)
        if not spooled:
            self.send_failures.inc(failures)
        self.poll_seconds.observe(seconds)
        self.polls.labels(("spooled" if spooled else "failed") if failures else "ok").inc()
        if not failures:
            self.last_success.set(now)


@dataclass
class StreamMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.rows = Counter(
            "marketflow_stream_rows",
            "Rows of committed micro-batches: written, duplicate (already in Parquet or repeated"
            " in the batch) or rejected (to raw_prices_rejects/).",
            ["result"],
            registry=r,
        )
        self.batches = Counter(
            "marketflow_stream_batches", "Micro-batches committed by the sink.", registry=r
        )
        self.batch_seconds = Histogram(
            "marketflow_stream_batch_seconds",
            "Sink time per micro-batch (parse, dedup, write, commit).",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "marketflow_stream_end_to_end_seconds",
            "Per batch: commit time minus the newest poll ts written (poll to Parquet).",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.lag_records = Gauge(
            "marketflow_stream_lag_records",
            "Records in the topic beyond the job's committed offsets, per partition.",
            ["partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "marketflow_stream_lag_seconds",
            "Age of the oldest record not yet written to Parquet (0 when caught up).",
            registry=r,
        )
        self.last_commit = Gauge(
            "marketflow_stream_last_commit_timestamp_seconds",
            "Unix time of the last committed micro-batch.",
            registry=r,
        )
        self.trigger_seconds = Gauge(
            "marketflow_stream_trigger_seconds", "Configured micro-batch interval.", registry=r
        )
        for result in ("written", "duplicate", "rejected"):
            self.rows.labels(result)

    def batch_committed(self, batch: dict, now: float) -> None:
        """Account one sink commit record (the dict the sink writes to ``commits/<id>.json``)."""
        self.rows.labels("written").inc(batch.get("rows_written", 0))
        self.rows.labels("duplicate").inc(batch.get("duplicates", 0))
        self.rows.labels("rejected").inc(batch.get("rejects", 0))
        self.batches.inc()
        if batch.get("duration_s") is not None:
            self.batch_seconds.observe(batch["duration_s"])
        if batch.get("ts_max") is not None:
            self.end_to_end.observe(max(0.0, now - batch["ts_max"]))
        self.last_commit.set(now)

    def lag(self, report) -> None:
        """Publish a :class:`~marketflow_assets.monitoring.lag.LagReport`."""
        for partition, records in report.records.items():
            self.lag_records.labels(str(partition)).set(records)
        self.lag_seconds.set(report.seconds)
