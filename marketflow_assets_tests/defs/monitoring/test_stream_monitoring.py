"""The streaming job under real faults on loopback: a poisoned message shows in the reject
counter and the ``reject_rate`` check; a SIGSTOPped job (whose own /metrics then hangs too) is
seen from outside by ``stream_lag`` and alerted on a real webhook with the word "lag"; after
SIGCONT the lag clears and a recovery alert follows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from marketflow_assets.defs.monitoring import alerts
from marketflow_assets.defs.monitoring import stream_checks as stream
from marketflow_assets.defs.monitoring.stream_sensors import evaluate_stream_checks
from marketflow_assets.resources.kafka import KafkaTopicResource
from marketflow_assets.runtime.services import free_port
from marketflow_assets.settings import load_monitoring_settings
from marketflow_assets_tests.monitoring.monitoring_helpers import (
    WebhookReceiver,
    sample,
    scrape,
    wait_for,
)

pytestmark = pytest.mark.stack

REPO_ROOT = Path(__file__).resolve().parents[3]
JOB = REPO_ROOT / "spark_streaming" / "kafka_streaming.py"


def produce(bootstrap: str, topic: str, poll: int, coins: int = 5, poison: bool = False) -> None:
    from kafka import KafkaProducer

    ts = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=poll)
    iso = ts.isoformat().replace("+00:00", "Z")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for c in range(coins):
        value = {"id": f"coin-{c}", "symbol": f"c{c}", "current_price": 10.0 + c, "ts": iso}
        producer.send(topic, key=f"coin-{c}".encode(), value=json.dumps(value).encode())
    if poison:  # bypasses the ingest validation: the job must reject it
        poisoned = {"id": "evil", "symbol": "e", "current_price": -3, "ts": iso}
        producer.send(topic, key=b"evil", value=json.dumps(poisoned).encode())
    producer.flush()
    producer.close()


class Monitor:
    """What the Dagster daemon does: stream_health_sensor ticks, then the alert sensor ticks."""

    def __init__(self, kafka: KafkaTopicResource, webhook_url: str):
        self.kafka = kafka
        self.webhook_url = webhook_url
        self.instance = dg.DagsterInstance.ephemeral()
        self.settings = dataclasses.replace(
            load_monitoring_settings({}),
            lag_warn_seconds=4.0,
            lag_error_seconds=600.0,
            alert_cooldown_seconds=0.0,
            startup_grace_seconds=0.0,  # not a fresh up: a stall alerts at once
        )
        self.history: list = []
        self.cursor = None

    def tick(self) -> dict[str, dg.AssetCheckEvaluation]:
        events, self.history = evaluate_stream_checks(self.kafka, self.settings, self.history)
        for event in events:
            self.instance.report_runless_asset_event(event)
        _, self.cursor = alerts.evaluate_alerts(
            self.instance,
            stream.STREAM_CHECK_KEYS,
            self.cursor,
            self.webhook_url,
            pacing=self.settings,
        )
        return {e.check_name: e for e in events}


@pytest.fixture
def job(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic("monitored", partitions=2)
    data_dir = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETFLOW_")}
    env.update(
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        MARKETFLOW_KAFKA_BOOTSTRAP=kafka_bootstrap,
        MARKETFLOW_KAFKA_TOPIC=topic,
        MARKETFLOW_DATA_DIR=str(data_dir),
    )
    argv = [sys.executable, str(JOB), "--master", "local[2]", "--trigger-seconds", "2"]
    argv += ["--metrics-port", str(port)]
    log = open(tmp_path / "job.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    kafka = KafkaTopicResource(bootstrap=kafka_bootstrap, topic=topic, data_dir=str(data_dir))
    yield proc, kafka, f"http://127.0.0.1:{port}/metrics"
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    print((tmp_path / "job.log").read_text()[-4000:])  # shown when the test fails


def test_poison_reject_then_sigstop_lag_alert_and_recovery(job):
    proc, kafka, url = job
    with WebhookReceiver() as hook:
        monitor = Monitor(kafka, hook.url)
        produce(kafka.bootstrap, kafka.topic, 0, poison=True)
        wait_for(
            lambda: sample(scrape(url), "marketflow_stream_rows_total", result="written") == 5,
            timeout=420,  # a cold Spark start on a busy 2-core machine takes minutes
            what="the first batch in the job's metrics",
        )
        metrics = scrape(url)
        assert sample(metrics, "marketflow_stream_rows_total", result="rejected") == 1
        assert sample(metrics, "marketflow_stream_batch_seconds_count") >= 1
        assert sample(metrics, "marketflow_stream_end_to_end_seconds_count") >= 1

        checks = monitor.tick()
        assert checks["reject_rate"].passed is False
        assert checks["reject_rate"].severity == dg.AssetCheckSeverity.ERROR  # 1 of 6 > 10 %
        assert checks["reject_rate"].metadata["rejects"].value == 1
        assert checks["stream_lag"].passed, checks["stream_lag"].description
        assert [t for t in hook.texts if "reject_rate" in t][0].startswith("ERROR:")

        os.kill(proc.pid, signal.SIGSTOP)  # the job freezes; so does its /metrics
        produce(kafka.bootstrap, kafka.topic, 1)
        with pytest.raises(OSError):
            scrape(url, timeout=2)

        def lag_alert():
            monitor.tick()
            return [t for t in hook.texts if "stream_lag" in t]

        lag_texts = wait_for(lag_alert, timeout=60, interval=1, what="a lag alert")
        assert lag_texts[0].startswith("WARN:") and "lag" in lag_texts[0].lower()
        lag = monitor.tick()["stream_lag"]
        assert lag.metadata["lag_records"].value == 5
        assert lag.metadata["lag_seconds"].value > 4

        os.kill(proc.pid, signal.SIGCONT)

        def recovered():
            monitor.tick()
            return [t for t in hook.texts if t.startswith("RESOLVED") and "stream_lag" in t]

        wait_for(recovered, timeout=120, interval=1, what="the recovery alert")
        assert len([t for t in hook.texts if "stream_lag" in t]) == 2  # one each way
        wait_for(
            lambda: (
                sample(scrape(url), "marketflow_stream_lag_seconds") == 0
                and sample(scrape(url), "marketflow_stream_rows_total", result="written") == 10
            ),
            timeout=30,
            what="the job's own lag gauge back to 0",
        )
        metrics = scrape(url)
        assert (
            sum(
                v
                for (name, _labels), v in metrics.items()
                if name == "marketflow_stream_lag_records"
            )
            == 0
        )
        assert time.time() - sample(metrics, "marketflow_stream_last_commit_timestamp_seconds") < 60
