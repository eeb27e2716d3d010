"""The whole flow through ``marketflow up``: the ingest metrics it prints agree with the broker,
a SIGSTOPped Spark job is alerted on a real webhook (the word "lag" in the text) and its recovery
after SIGCONT too — through the Dagster daemon's sensors, as in production."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from marketflow_assets.runtime.services import free_port
from marketflow_assets_tests.monitoring.monitoring_helpers import (
    WebhookReceiver,
    count_messages,
    sample,
    scrape,
    wait_for,
)

pytestmark = pytest.mark.stack

MARKETFLOW = str(Path(sys.executable).with_name("marketflow"))
COINS = 10


def _spark_job_pid(up_pid: int) -> int:
    for child in psutil.Process(up_pid).children(recursive=True):
        if any("kafka_streaming.py" in part for part in child.cmdline()):
            return child.pid
    raise AssertionError("the Spark streaming job is not running under marketflow up")


@pytest.fixture
def data_root():
    """A data dir outside pytest's basetemp: another pytest session starting meanwhile resets
    /tmp/pytest-of-<user> to 0700, which locks out the embedded PostgreSQL's own OS user."""
    with tempfile.TemporaryDirectory(prefix="marketflow-up-monitoring-") as path:
        yield Path(path)


@pytest.mark.timeout(900)
def test_up_alerts_on_a_stalled_spark_job_and_on_its_recovery(data_root):
    log_path = data_root / "up.log"
    with WebhookReceiver() as hook, open(log_path, "w") as log:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MARKETFLOW_", "COINGECKO_", "DAGSTER_"))
        }
        env.update(
            MARKETFLOW_DATA_DIR=str(data_root / "data"),
            MARKETFLOW_ALERT_WEBHOOK_URL=hook.url,
            MARKETFLOW_LAG_WARN_SECONDS="30",
            PYTHONUNBUFFERED="1",
        )
        argv = [MARKETFLOW, "up", "--source", "simulate", "--interval", "10"]
        argv += ["--coins", str(COINS), "--port", str(free_port()), "--spark-master", "local[1]"]
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            text = wait_for(
                lambda: "ready: spark" in log_path.read_text() and log_path.read_text(),
                timeout=420,
                interval=2,
                what="raw Parquet from the Spark job",
            )
            assert proc.poll() is None
            ingest_url, spark_url = re.search(r"metrics: ingest (\S+), spark (\S+)", text).groups()
            bootstrap = re.search(r"Tansu broker ready .* on (\S+)", text).group(1)

            def quiet_compare():
                before = scrape(ingest_url)
                published = count_messages(bootstrap, "crypto_prices", quiet_s=0.5)
                return before == scrape(ingest_url) and (before, published)

            metrics, published = wait_for(quiet_compare, 60, 0.3, "a moment between polls")
            ok = sample(metrics, "marketflow_ingest_polls_total", outcome="ok")
            assert ok >= 1
            assert sample(metrics, "marketflow_ingest_records_total", result="published") == (
                published
            )
            assert published == ok * COINS
            assert sample(scrape(spark_url), "marketflow_stream_rows_total", result="written") > 0

            # SIGSTOP once the job has worked through its start-up backlog (no lag alert pending)
            def caught_up():
                lagging = sample(scrape(spark_url), "marketflow_stream_lag_seconds") >= 25
                alerted = [t for t in hook.texts if "stream_lag" in t]
                return not lagging and (not alerted or alerted[-1].startswith("RESOLVED"))

            wait_for(caught_up, timeout=300, interval=2, what="the job to catch up")
            before = len([t for t in hook.texts if "stream_lag" in t])
            pid = _spark_job_pid(proc.pid)
            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            lag = wait_for(
                lambda: [t for t in hook.texts if "stream_lag" in t and "lag" in t.lower()][
                    before:
                ],
                timeout=240,
                interval=2,
                what="a lag alert within 4 minutes of SIGSTOP",
            )
            print(f"lag alert {time.monotonic() - stopped:.0f} s after SIGSTOP: {lag[0]}")
            assert not lag[0].startswith("RESOLVED")
            os.kill(pid, signal.SIGCONT)
            resumed = time.monotonic()
            wait_for(
                lambda: [
                    t
                    for t in [t for t in hook.texts if "stream_lag" in t][before:]
                    if t.startswith("RESOLVED")
                ],
                timeout=240,
                interval=2,
                what="a recovery alert within 4 minutes of SIGCONT",
            )
            print(f"recovery alert {time.monotonic() - resumed:.0f} s after SIGCONT")
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            assert proc.wait(120) == 0
        finally:
            if proc.poll() is None:  # a failed assertion: resume the job, stop up cleanly
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
            print("alerts:", *hook.texts, sep="\n  ")
            print(log_path.read_text()[-3000:])
