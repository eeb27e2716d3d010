"""``marketflow ingest --metrics-port``: the scraped counters equal what the broker holds, and a
stopped broker shows as failed polls plus one alert on a real local webhook."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from marketflow_assets.monitoring.ingest_health import PollAlerts
from marketflow_assets.runtime.services import EmbeddedKafka, free_port
from marketflow_assets_tests.monitoring.monitoring_helpers import (
    WebhookReceiver,
    count_messages,
    sample,
    scrape,
    wait_for,
)

pytestmark = pytest.mark.stack

COINS_GOOD = 4


def replay_file(path, polls: int) -> None:
    """``polls`` polls 4 s apart, each with 4 valid records and 1 invalid one."""
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    with open(path, "w") as fh:
        for k in range(polls):
            ts = (start + dt.timedelta(seconds=4 * k)).isoformat().replace("+00:00", "Z")
            coins = [
                {
                    "id": f"coin-{c}",
                    "symbol": f"c{c}",
                    "current_price": 10.0 + c,
                    "last_updated": ts,
                }
                for c in range(COINS_GOOD)
            ]
            coins.append({"id": "broken", "symbol": "x", "current_price": -1, "last_updated": ts})
            fh.write(json.dumps({"ts": ts, "coins": coins}) + "\n")


def test_ingest_metrics_match_the_broker_and_broker_loss_alerts(tmp_path):
    path = tmp_path / "polls.jsonl"
    replay_file(path, polls=100)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    broker = EmbeddedKafka(tmp_path / "kafka")
    bootstrap = broker.start()
    proc = None
    try:
        with WebhookReceiver() as hook:
            env = {
                **os.environ,
                "MARKETFLOW_KAFKA_BOOTSTRAP": bootstrap,
                "MARKETFLOW_KAFKA_TOPIC": "prices",
                "MARKETFLOW_DATA_DIR": str(tmp_path / "data"),  # its own spool, not ./data's
                "MARKETFLOW_ALERT_WEBHOOK_URL": hook.url,
                "MARKETFLOW_ALERT_COOLDOWN_SECONDS": "0",
            }
            argv = [sys.executable, "-m", "marketflow_assets.cli", "ingest", "--source", "replay"]
            argv += ["--replay-file", str(path), "--speed", "1", "--metrics-port", str(port)]
            argv += ["--partitions", "2", "--delivery-timeout", "4"]
            proc = subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            wait_for(
                lambda: sample(scrape(url), "marketflow_ingest_polls_total", outcome="ok") >= 3,
                timeout=60,
                what="3 ok polls in the scraped metrics",
            )

            def stable_counts():
                before = scrape(url)
                published = count_messages(bootstrap, "prices", quiet_s=0.5)
                dead = count_messages(bootstrap, "prices_dlq", quiet_s=0.5)
                after = scrape(url)
                return (before == after) and (before, published, dead)

            metrics, published, dead = wait_for(stable_counts, 60, 0.5, "a quiet moment")
            ok = sample(metrics, "marketflow_ingest_polls_total", outcome="ok")
            assert ok >= 3
            assert sample(metrics, "marketflow_ingest_records_total", result="published") == (
                published
            )
            assert published == COINS_GOOD * ok
            assert sample(metrics, "marketflow_ingest_records_total", result="dead_lettered") == (
                dead
            )
            assert dead == ok
            assert sample(metrics, "marketflow_ingest_polls_total", outcome="failed") == 0
            assert hook.texts == []

            broker.stop()  # the broker goes away under the running ingest loop
            wait_for(
                lambda: sample(scrape(url), "marketflow_ingest_polls_total", outcome="failed") >= 1,
                timeout=90,
                what="a failed poll after the broker stopped",
            )
            failed_metrics = scrape(url)
            assert sample(failed_metrics, "marketflow_ingest_send_failures_total") >= 1
            wait_for(lambda: hook.texts, 10, what="the alert")
            assert len(hook.texts) == 1
            assert hook.texts[0].startswith("FAILURE: Marketflow ingest cannot send to Kafka")
            assert "the polls wait in the spool" in hook.texts[0]
            assert proc.poll() is None  # the loop survives a lost broker
    finally:
        if proc is not None:
            proc.kill()  # clean shutdown is not under test here
            print(proc.communicate(timeout=30)[0][-3000:])  # shown when the test fails
        broker.stop()


def test_poll_alerts_state_changes_cooldown_and_recovery():
    """Pure state machine: one message per change, flaps within the cooldown held."""
    sent, now = [], [0.0]
    alerts = PollAlerts(
        lambda prev, state, text: sent.append(text), cooldown=60, clock=lambda: now[0]
    )
    assert alerts.poll(False, "HTTP 429") is None  # one failed fetch is not news
    assert alerts.poll(False, "HTTP 429").startswith("FAILURE")  # the second one is
    assert alerts.poll(False, "timeout") is None  # still failing: said already
    now[0] = 10
    assert alerts.poll(True) is None  # recovered within the cooldown: held
    now[0] = 61
    assert alerts.poll(True).startswith("RESOLVED")
    now[0] = 200
    assert alerts.poll(False, "broker", broker=True).startswith("FAILURE")  # broker: at once
    assert len(sent) == 3
