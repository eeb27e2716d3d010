"""Shared helpers of the monitoring tests: scraping /metrics, a webhook receiver, topic counts."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, timeout: float = 3.0) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text endpoint."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} ({last_exc})")


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 collecting the ``text`` of every POST (Slack format)."""

    def __init__(self):
        self.texts: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.texts.append(json.loads(body)["text"])
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def count_messages(bootstrap: str, topic: str, quiet_s: float = 1.5) -> int:
    """Messages readable in ``topic`` now (read until nothing new arrives for ``quiet_s``)."""
    from kafka import KafkaConsumer, TopicPartition

    # a short fetch wait: the broker (Tansu) hands over records a held fetch waited for only when
    # the wait ends, and kafka-python's default (0.5 s) is as long as a short quiet window
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        for tp in tps:
            consumer.position(tp)  # the beginning looked up before the quiet window starts
        n, last = 0, time.monotonic()
        while time.monotonic() - last < quiet_s:
            got = sum(len(r) for r in consumer.poll(timeout_ms=200).values())
            if got:
                n, last = n + got, time.monotonic()
        return n
    finally:
        consumer.close()
