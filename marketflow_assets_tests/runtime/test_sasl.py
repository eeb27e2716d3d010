"""SASL connectivity against a broker that really checks passwords (issue 29): the Tansu broker
behind :class:`~marketflow_assets_tests.sasl_proxy.SaslProxy` (PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512; Tansu itself cannot check SASL credentials).

* with the right password, the one Kafka client layer (pre-flight, admin, producer, group-less
  consumer, offset probe) works through the proxy, every connection authenticated;
* a wrong password is a configuration error: :func:`kafka_client.preflight` raises
  :class:`kafka_client.KafkaAccessError` within 30 s, ``marketflow ingest`` exits 2 with one
  line, and the password is in neither.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest

from marketflow_assets import kafka_client
from marketflow_assets.settings import load_settings
from marketflow_assets_tests.runtime.test_secure_connectivity import _fails_with_one_line
from marketflow_assets_tests.runtime.test_up import MARKETFLOW, _env
from marketflow_assets_tests.sasl_proxy import SaslKafka, ensure_sasl_apis

pytestmark = pytest.mark.stack

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
USER, PASSWORD = "marketflow", "Sasl-s3cret-Pw"
WRONG = "Wrong-s3cret-Pw"


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory):
    with SaslKafka(tmp_path_factory.mktemp("sasl-kafka"), users={USER: PASSWORD}) as broker:
        yield broker


def _sasl_env(broker, mechanism: str, password: str, **extra: str) -> dict[str, str]:
    return {
        "MARKETFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
        "MARKETFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "MARKETFLOW_KAFKA_SASL_MECHANISM": mechanism,
        "MARKETFLOW_KAFKA_SASL_USERNAME": USER,
        "MARKETFLOW_KAFKA_SASL_PASSWORD": password,
        **extra,
    }


def _security(env: dict[str, str]):
    return load_settings({"MARKETFLOW_DOTENV": "", **env}).kafka_security


def _logins(broker, mechanism: str, ok: bool) -> int:
    return sum(1 for e in broker.proxy.events if e.mechanism == mechanism and e.ok is ok)


def _read_all(bootstrap: str, security, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    from kafka import TopicPartition

    consumer = kafka_client.group_less_consumer(bootstrap, "marketflow-sasl-test", security)
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or [])
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        got: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 30
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got += [(r.key, r.value) for r in records]
        return got
    finally:
        consumer.close()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_right_password_produces_and_reads_back_through_the_proxy(sasl_kafka, mechanism):
    from kafka.admin import NewTopic

    security = _security(_sasl_env(sasl_kafka, mechanism, PASSWORD))
    bootstrap = sasl_kafka.bootstrap
    before = _logins(sasl_kafka, mechanism, True)
    kafka_client.preflight(bootstrap, security, timeout_s=10)
    assert _logins(sasl_kafka, mechanism, True) > before  # the proxy authenticated it

    topic = "sasl_" + mechanism.lower().replace("-", "_")
    admin = kafka_client.admin(bootstrap, security)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    logins = _logins(sasl_kafka, mechanism, True)
    producer = kafka_client.producer(bootstrap, security)
    sent = [(f"coin-{i}".encode(), f"price-{i}".encode()) for i in range(6)]
    try:
        for key, value in sent:
            producer.send(topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()
    # the bootstrap connection, then one to the broker the metadata names (the proxy's address)
    assert _logins(sasl_kafka, mechanism, True) - logins >= 2

    assert sorted(_read_all(bootstrap, security, topic, len(sent))) == sorted(sent)
    probe = kafka_client.KafkaOffsetProbe(bootstrap, topic, security=security)
    try:
        parts = probe.partitions()
        assert parts == [0, 1]
        ends, begins = probe.end_offsets(parts), probe.beginning_offsets(parts)
        assert sum(ends.values()) - sum(begins.values()) == len(sent)
    finally:
        probe.close()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_is_a_one_line_access_error(sasl_kafka, mechanism):
    security = _security(_sasl_env(sasl_kafka, mechanism, WRONG))
    before = _logins(sasl_kafka, mechanism, False)
    started = time.monotonic()
    with pytest.raises(kafka_client.KafkaAccessError) as info:
        kafka_client.preflight(sasl_kafka.bootstrap, security, timeout_s=5)
    took = time.monotonic() - started
    assert took < 30, f"took {took:.0f} s"
    message = str(info.value)
    assert "SASL" in message and mechanism in message and repr(USER) in message
    assert WRONG not in message and PASSWORD not in message
    assert _logins(sasl_kafka, mechanism, False) > before  # refused by the proxy, not away


def _request(sock: socket.socket, api_key: int, version: int, body: bytes, cid: int) -> bytes:
    header = struct.pack(">hhih", api_key, version, cid, 4) + b"test"
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    head = sock.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        return b""
    return sock.recv(struct.unpack(">i", head)[0], socket.MSG_WAITALL)


def test_the_proxy_speaks_kafka_before_authentication(sasl_kafka):
    port = int(sasl_kafka.bootstrap.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        answer = _request(sock, 18, 0, b"", 1)  # ApiVersions v0, relayed from Tansu
        cid, error, count = struct.unpack_from(">ihi", answer)
        assert (cid, error) == (1, 0)
        apis = {struct.unpack_from(">h", answer, 10 + 6 * i)[0] for i in range(count)}
        assert {17, 36} <= apis  # SaslHandshake, SaslAuthenticate
        assert _request(sock, 3, 0, struct.pack(">i", -1), 2) == b""  # Metadata: dropped
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        answer = _request(sock, 17, 1, struct.pack(">h", 6) + b"GSSAPI", 3)
        cid, error, count = struct.unpack_from(">ihi", answer)
        assert (cid, error, count) == (3, 33, 3)  # UNSUPPORTED_SASL_MECHANISM, ours listed


def _entry(api_key: int, low: int, high: int, tagged: bytes = b"") -> bytes:
    return struct.pack(">hhh", api_key, low, high) + tagged


def test_api_versions_rewrite_adds_the_sasl_apis():
    # v0: error code, int32 count, entries
    v0 = struct.pack(">hi", 0, 1) + _entry(0, 0, 11)
    added = _entry(0, 0, 11) + _entry(17, 0, 1) + _entry(36, 0, 2)
    assert ensure_sasl_apis(0, v0) == struct.pack(">hi", 0, 3) + added
    # v3+: compact array (count + 1), entries with tagged fields, throttle time, tagged fields
    tail = struct.pack(">i", 0) + b"\x00"
    v3 = b"\x00\x00\x02" + _entry(0, 0, 11, b"\x00") + tail
    out = ensure_sasl_apis(3, v3)
    added = _entry(0, 0, 11, b"\x00") + _entry(17, 0, 1, b"\x00") + _entry(36, 0, 2, b"\x00")
    assert out == b"\x00\x00\x04" + added + tail
    assert ensure_sasl_apis(3, out) == out  # listed already: unchanged
    error = struct.pack(">hi", 35, 0)  # UNSUPPORTED_VERSION: relayed as it is
    assert ensure_sasl_apis(3, error) == error


def test_ingest_over_scram_and_a_wrong_password_exits_2(sasl_kafka, tmp_path):
    argv = [MARKETFLOW, "ingest", "--source", "simulate", "--coins", "3", "--once"]
    topic = "sasl_ingest"
    env = _sasl_env(sasl_kafka, "SCRAM-SHA-512", PASSWORD, MARKETFLOW_KAFKA_TOPIC=topic)
    proc = subprocess.run(
        argv,
        env=_env(tmp_path / "data", MARKETFLOW_SPOOL_DIR="off", **env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert PASSWORD not in proc.stderr + proc.stdout
    probe = kafka_client.KafkaOffsetProbe(sasl_kafka.bootstrap, topic, security=_security(env))
    try:
        parts = probe.partitions()
        ends, begins = probe.end_offsets(parts), probe.beginning_offsets(parts)
        assert sum(ends.values()) - sum(begins.values()) == 3
    finally:
        probe.close()

    wrong = _sasl_env(sasl_kafka, "SCRAM-SHA-512", WRONG, MARKETFLOW_KAFKA_TOPIC=topic)
    _fails_with_one_line(
        argv[1:], {"MARKETFLOW_SPOOL_DIR": "off", **wrong}, tmp_path, "SASL", WRONG
    )
