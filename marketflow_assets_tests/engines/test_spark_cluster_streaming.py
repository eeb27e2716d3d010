"""The streaming job on a Spark standalone cluster: exactly once across a SIGKILL and a restart.

(Re-running a finished job adds nothing: tested in local mode, ``streaming/test_spark_job.py``;
each extra Spark application costs ~30 s here.)

The job is started the ways a user would: ``python spark_streaming/kafka_streaming.py`` with
``MARKETFLOW_SPARK_MASTER=spark://127.0.0.1:<port>`` (no ``--master``), and
``spark-submit --master spark://... spark_streaming/kafka_streaming.py``. Its Kafka source (the
Python Data Source, kafka-python) then runs in the worker's executors, not in the driver, and so
does the JSON parsing. The driver listens on loopback only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from marketflow_assets_tests.engines.watch import ProcessWatch
from marketflow_assets_tests.streaming.streaming_helpers import (
    JOB,
    SPARK_SUBMIT,
    batch_logs,
    job_env,
    produce_known_set,
    read_raw,
)
from marketflow_assets_tests.streaming.test_spark_job import assert_exact

pytestmark = [pytest.mark.engines, pytest.mark.spark_cluster, pytest.mark.timeout(900)]


def cluster_env(bootstrap: str, topic: str, data_dir, master_url: str) -> dict[str, str]:
    env = job_env(bootstrap, topic, data_dir)
    env["MARKETFLOW_SPARK_MASTER"] = master_url
    return env


def run_on_cluster(
    env, *args, cwd, timeout=480, submit_to: str | None = None
) -> tuple[subprocess.CompletedProcess, ProcessWatch]:
    """Run the job to completion (``spark-submit --master submit_to`` if given) while watching
    the sockets its processes listen on."""
    if submit_to:
        cmd = [str(SPARK_SUBMIT), "--master", submit_to, str(JOB), *args]
    else:
        cmd = [sys.executable, str(JOB), *args]
    with ProcessWatch() as watch:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        watch.root = proc.pid
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), watch


def test_streaming_job_on_standalone_cluster_is_exactly_once_across_sigkill(
    spark_cluster, kafka_bootstrap, new_topic, data_dir, job_cwd
):
    topic = new_topic("cluster", partitions=2)
    produced = produce_known_set(kafka_bootstrap, topic, coins=6, polls=5)
    env = cluster_env(kafka_bootstrap, topic, data_dir, spark_cluster.master_url)
    commits = data_dir / "checkpoints" / "raw_prices" / topic / "marketflow_sink" / "batches"
    apps_before = spark_cluster.master_log.read_text().count(
        "Registering app marketflow-kafka-streaming"
    )

    # 1. continuous mode (python, master from the environment), small micro-batches; SIGKILL the
    #    driver once a batch has committed
    watch = ProcessWatch().start()
    proc = subprocess.Popen(
        [sys.executable, str(JOB), "--trigger-seconds", "0.5", "--max-offsets-per-trigger", "12"],
        env=env,
        cwd=job_cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    watch.root = proc.pid
    try:
        deadline = time.monotonic() + 420  # a loaded 2-core machine needs minutes
        while time.monotonic() < deadline and proc.poll() is None:
            if commits.is_dir() and any(commits.glob("*.json")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert any(commits.glob("*.json")), "job made no progress on the cluster"
        time.sleep(0.7)
        watch.stop()
        os.killpg(proc.pid, signal.SIGKILL)  # driver + its JVM; the cluster's executor is lost
        proc.wait(30)
    finally:
        watch.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    # the driver of a loopback cluster listens on 127.0.0.1 only
    assert any(" java" in where for where in watch.listening), watch.listening
    assert watch.exposed == set()
    before = read_raw(data_dir)
    assert (0 if before is None else len(before)) < len(produced.expected_rows), "killed too late"

    # 2. restart through spark-submit (drain and exit): exactly the expected rows and rejects
    again, watch = run_on_cluster(
        env, "--available-now", cwd=job_cwd, submit_to=spark_cluster.master_url
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert watch.exposed == set(), watch.exposed
    assert_exact(data_dir, produced)
    assert not (commits.parent / "pending").exists()
    # (spark-submit forwards the Python driver's stderr to its own stdout)
    assert batch_logs(again.stdout + again.stderr), "restart processed nothing"

    # the work really ran on the cluster: both applications registered with the master and got
    # an executor on the worker (its own work directory)
    master_log = spark_cluster.master_log.read_text()
    assert master_log.count("Registering app marketflow-kafka-streaming") == apps_before + 2
    apps = [p for p in spark_cluster.executors_dir.iterdir() if p.name.startswith("app-")]
    assert len(apps) >= 2
