"""Production connectivity against real servers on 127.0.0.1 (issue 29): Kafka through TLS
(Tansu behind stunnel4, with and without mutual TLS) and PostgreSQL 15 with ``ssl=on``,
scram passwords and ``sslmode=verify-full``.

* the one Kafka client layer (ingest's publisher, the offset probe, consumers) works over TLS;
* a refused certificate, a wrong host name, a missing or foreign client certificate, a wrong
  PostgreSQL password: each fails within a minute with one clear line and exit code 2, and no
  secret in the output;
* end to end over verified TLS: ``marketflow up`` -> ingest -> Spark -> raw -> Dagster ->
  PostgreSQL and the live path, the password nowhere in the log or Dagster's run storage.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import psycopg2
import pytest

from marketflow_assets import kafka_client
from marketflow_assets.runtime.services import free_port, wait_for_kafka
from marketflow_assets.settings import load_settings
from marketflow_assets_tests.helpers import raw_key_counts
from marketflow_assets_tests.runtime.test_up import (
    MARKETFLOW,
    _env,
    _graphql,
    _recorded,
    _still_running,
    _stop,
    _tail,
)
from marketflow_assets_tests.tls_servers import TlsKafka, TlsPostgres, make_pki

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_kafka(pki, tmp_path_factory):
    with TlsKafka(tmp_path_factory.mktemp("tls-kafka"), pki) as broker:
        yield broker


@pytest.fixture(scope="module")
def tls_postgres(pki):
    with TlsPostgres(pki) as server:
        yield server


def _kafka_env(broker, cafile: Path, **extra: str) -> dict[str, str]:
    return {
        "MARKETFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
        "MARKETFLOW_KAFKA_SECURITY_PROTOCOL": "SSL",
        "MARKETFLOW_KAFKA_SSL_CAFILE": str(cafile),
        **extra,
    }


def _security(env: dict[str, str]):
    return load_settings({"MARKETFLOW_DOTENV": "", **env}).kafka_security


def _fails_with_one_line(argv, env, tmp_path, must_contain: str, secret: str | None = None):
    started = time.monotonic()
    proc = subprocess.run(
        [MARKETFLOW, *argv],
        env=_env(tmp_path / "data", **env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert took < 60, f"took {took:.0f} s"
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"marketflow {argv[0]}: ") and must_contain in last, proc.stderr
    assert "Traceback" not in proc.stderr
    if secret:
        assert secret not in proc.stderr + proc.stdout
    return last


def test_ingest_publishes_over_tls_and_the_probe_reads_it_back(tls_kafka, pki, tmp_path):
    env = _kafka_env(tls_kafka, pki.ca, MARKETFLOW_KAFKA_TOPIC="tls_prices")
    proc = subprocess.run(
        [MARKETFLOW, "ingest", "--source", "simulate", "--coins", "7", "--once"],
        env=_env(tmp_path / "data", MARKETFLOW_SPOOL_DIR="off", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SSL, CA " in proc.stderr  # the log line says how it connected
    security = _security(env)
    probe = kafka_client.KafkaOffsetProbe(tls_kafka.bootstrap, "tls_prices", security=security)
    try:
        parts = probe.partitions()
        ends = probe.end_offsets(parts)
        begins = probe.beginning_offsets(parts)
        assert sum(ends.values()) - sum(begins.values()) == 7
        assert probe.topic_id()  # the one topic-id helper, over TLS
    finally:
        probe.close()


def test_refused_kafka_certificates_fail_fast_with_one_line(tls_kafka, pki, tmp_path):
    argv = ["ingest", "--source", "simulate", "--coins", "3", "--once"]
    # a CA that did not sign the broker's certificate
    _fails_with_one_line(
        argv,
        _kafka_env(tls_kafka, pki.other_ca),
        tmp_path,
        "TLS certificate was refused",
    )
    # a name the certificate does not list (it lists localhost, not 127.0.0.1)
    last = _fails_with_one_line(
        argv,
        _kafka_env(tls_kafka, pki.ca, MARKETFLOW_KAFKA_BOOTSTRAP=f"127.0.0.1:{tls_kafka.tls_port}"),
        tmp_path,
        "mismatch",
    )
    assert "connect by a name the certificate lists" in last
    # `up` checks the same before it starts anything of its own
    _fails_with_one_line(
        ["up", "--source", "simulate"],
        _kafka_env(tls_kafka, pki.other_ca),
        tmp_path,
        "TLS certificate was refused",
    )


def test_mutual_tls_needs_a_client_certificate_the_broker_trusts(pki, tmp_path):
    with TlsKafka(tmp_path / "mtls", pki, mutual=True) as broker:
        good = _security(
            _kafka_env(
                broker,
                pki.ca,
                MARKETFLOW_KAFKA_SSL_CERTFILE=str(pki.client_cert),
                MARKETFLOW_KAFKA_SSL_KEYFILE=str(pki.client_key),
            )
        )
        wait_for_kafka(broker.bootstrap, 30, good)
        producer = kafka_client.producer(broker.bootstrap, good, allow_auto_create_topics=True)
        producer.send("mtls", b"hello").get(timeout=30)
        producer.close()
        without = _security(_kafka_env(broker, pki.ca))
        with pytest.raises(kafka_client.KafkaAccessError, match="Kafka at localhost"):
            kafka_client.preflight(broker.bootstrap, without, timeout_s=10)
        rogue = _security(
            _kafka_env(
                broker,
                pki.ca,
                MARKETFLOW_KAFKA_SSL_CERTFILE=str(pki.rogue_client_cert),
                MARKETFLOW_KAFKA_SSL_KEYFILE=str(pki.rogue_client_key),
            )
        )
        with pytest.raises(kafka_client.KafkaAccessError):
            kafka_client.preflight(broker.bootstrap, rogue, timeout_s=10)


def test_postgres_refusals_fail_fast_with_one_line(tls_postgres, tmp_path):
    pg = tls_postgres
    cases = [
        (pg.verified_url(password="wrong-Pw"), "refused the password"),
        (pg.verified_url(sslrootcert=str(pg.pki.other_ca)), "certificate is not trusted"),
        (pg.verified_url(host="127.0.0.1"), "names another host"),
        (pg.url(sslmode="disable"), "rejects this connection"),
    ]
    for url, reason in cases:
        _fails_with_one_line(
            ["up", "--source", "simulate"],
            {"MARKETFLOW_POSTGRES_URL": url},
            tmp_path,
            reason,
            secret=pg.password,
        )


def _count(url: str, sql: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.timeout(600)
def test_up_end_to_end_over_verified_tls_and_stops_cleanly(tls_kafka, tls_postgres, pki, tmp_path):
    """`marketflow up` with only environment variables pointing at a TLS broker and a
    verify-full PostgreSQL: ingest -> Kafka -> Spark -> raw -> Dagster -> PostgreSQL and the
    live path; the UI serves the asset graph; a closed terminal (SIGHUP, handled like Ctrl-C)
    leaves no process behind, and every recorded poll is in raw exactly once. (The embedded
    default stack is run end to end by test_up.py's restart test and the fault test.)"""
    url = tls_postgres.verified_url()
    env = _kafka_env(
        tls_kafka, pki.ca, MARKETFLOW_KAFKA_TOPIC="tls_e2e", MARKETFLOW_POSTGRES_URL=url
    )
    data_dir = tmp_path / "data"
    port, dashboard_port = free_port(), free_port()
    log_path = tmp_path / "up.log"
    argv = [
        MARKETFLOW,
        "up",
        "--source",
        "simulate",
        "--interval",
        "5",
        "--coins",
        "6",
        "--port",
        str(port),
        "--dashboard-port",
        str(dashboard_port),
        "--spark-master",
        "local[1]",
        "--record",
        str(tmp_path / "record.jsonl"),
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv, env=_env(data_dir, **env), stdout=log, stderr=subprocess.STDOUT
        )
    started = time.monotonic()
    try:
        deadline = started + 300
        exact = live = 0
        while time.monotonic() < deadline and not (exact and live):
            assert proc.poll() is None, _tail(log_path)
            time.sleep(3)
            try:
                exact = _count(url, "SELECT count(*) FROM price_indicators WHERE source='dagster'")
                live = _count(url, "SELECT count(*) FROM price_indicators WHERE source='live'")
            except psycopg2.Error:
                continue
        assert exact and live, f"exact={exact} live={live}\n" + _tail(log_path)
        print(f"exact rows {time.monotonic() - started:.0f} s after start")
        deadline = time.monotonic() + 180
        while True:
            try:
                answer = _graphql(port, "{ assetNodes { assetKey { path } } }")
                break
            except OSError:
                assert time.monotonic() < deadline, _tail(log_path)
                time.sleep(3)
        keys = {"/".join(n["assetKey"]["path"]) for n in answer["data"]["assetNodes"]}
        assert {"raw_prices", "price_indicators", "market_movers"} <= keys
        up = psutil.Process(proc.pid)
        stack = [up, *up.children(recursive=True)]
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(120) == 0, _tail(log_path)
    finally:
        _stop(proc)
    time.sleep(1)
    alive = _still_running(stack)
    assert not alive, f"processes left after SIGHUP: {alive}"
    # ingest stopped first and the Spark job wrote what the broker still held
    expected = _recorded(tmp_path / "record.jsonl")
    rows = raw_key_counts(data_dir / "raw_prices")
    assert set(expected) <= set(rows) and max(rows.values()) == 1
    text = log_path.read_text()
    for component in ("ingest", "spark", "dagster"):
        assert f"ready: {component}" in text
    assert f"ready: dashboard — http://127.0.0.1:{dashboard_port}" in text
    # quiet logs: Dagster runs in its DAGSTER_HOME (no warning about the repository's
    # dagster.yaml), says nothing about `dg dev`, its run-retry daemon found its cursor; no JVM
    # line about incubator modules
    dagster_log = (data_dir / "logs" / "dagster.log").read_text(errors="replace")
    for noise in ("Found a dagster instance configuration", "is superseded", "No cursor for"):
        assert noise not in dagster_log, noise
    assert "'EventLogConsumerDaemon'" in dagster_log  # the daemon was configured
    for jvm_log in ("spark_streaming.log", "spark-connect.log"):
        text_of_jvm = (data_dir / "logs" / jvm_log).read_text(errors="replace")
        assert "Using incubator modules" not in text_of_jvm, jvm_log
    assert "kafka: using localhost:" in text and "(SSL, CA " in text
    assert tls_postgres.password not in text
    # nothing Dagster stored (runs, events, resource config) holds the password
    stored = _count(
        url,
        "SELECT (SELECT count(*) FROM runs WHERE run_body LIKE '%' || "
        f"'{tls_postgres.password}' || '%') + (SELECT count(*) FROM event_logs WHERE event "
        f"LIKE '%' || '{tls_postgres.password}' || '%')",
    )
    assert stored == 0


def test_the_lag_check_says_refused_not_unreachable(tls_kafka, pki, tmp_path, monkeypatch):
    """A broker that refuses the certificate is a configuration problem on the Dagster side
    too: the stream-lag check's description says so instead of "unreachable"."""
    from marketflow_assets.defs.monitoring.stream_checks import measure_lag_outcome
    from marketflow_assets.resources.kafka import KafkaTopicResource
    from marketflow_assets.settings import load_monitoring_settings

    for name, value in _kafka_env(tls_kafka, pki.other_ca).items():
        monkeypatch.setenv(name, value)
    kafka = KafkaTopicResource(data_dir=str(tmp_path))
    outcome = measure_lag_outcome(kafka, load_monitoring_settings(), time.time())
    assert not outcome.passed
    assert "TLS certificate was refused" in outcome.description, outcome.description
