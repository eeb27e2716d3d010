"""The embedded services are real: a Kafka round trip through Tansu, SQL through PostgreSQL 16."""

from __future__ import annotations

import time

import psycopg2
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from marketflow_assets.runtime.services import (
    EmbeddedKafka,
    EmbeddedPostgres,
    ServiceError,
    free_port,
    wait_for_kafka,
    wait_for_postgres,
)


def test_kafka_round_trip(kafka_bootstrap, new_topic):
    topic = new_topic("svc")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(7):
        producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()).get(10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    got = []
    for _ in range(20):
        got += [r.value for recs in consumer.poll(500).values() for r in recs]
        if len(got) >= 7:
            break
    consumer.close()
    assert got == [f"v{i}".encode() for i in range(7)]


def test_postgres_is_postgres_16(postgres_url):
    conn = psycopg2.connect(postgres_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version_num")
            version = int(cur.fetchone()[0])
    finally:
        conn.close()
    assert version >= 160000


def test_unreachable_postgres_is_one_line_error():
    url = f"postgresql://u:secret@127.0.0.1:{free_port()}/db"
    with pytest.raises(ServiceError) as err:
        wait_for_postgres(url, timeout=1)
    message = str(err.value)
    assert message.startswith("MARKETFLOW_POSTGRES_URL unreachable")
    assert "secret" not in message and "\n" not in message


def test_unreachable_kafka_is_clear_error():
    with pytest.raises(ServiceError, match="MARKETFLOW_KAFKA_BOOTSTRAP"):
        wait_for_kafka(f"127.0.0.1:{free_port()}", timeout=2)


def test_embedded_kafka_stops_its_process(tmp_path):
    broker = EmbeddedKafka(tmp_path)
    broker.start()
    proc = broker.proc
    assert proc.poll() is None
    broker.stop()
    assert proc.poll() is not None


def _postmaster(pgdata):
    import psutil

    return psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))


def _select_1(url: str) -> int:
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.timeout(180)
def test_embedded_postgres_restarts_after_kill_9_on_the_same_url(tmp_path):
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    url = pg.start()
    try:
        assert pg.alive()
        _postmaster(pg.pgdata).kill()
        deadline = time.monotonic() + 30
        while pg.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pg.alive()
        with pytest.raises(psycopg2.OperationalError):
            _select_1(url)
        deadline = time.monotonic() + 60
        while True:  # the killed server's backends may hold its shared memory a moment
            try:
                assert pg.restart() == url  # clients' URLs stay valid
                break
            except ServiceError:
                assert time.monotonic() < deadline
                time.sleep(1)
        assert pg.alive() and _select_1(url) == 1
    finally:
        pg.stop()
    assert not pg.alive()


@pytest.mark.timeout(180)
def test_a_server_adopted_from_a_killed_user_is_stopped_by_the_last_live_one(tmp_path):
    """`up` killed with -9 leaves its PostgreSQL running with its pid in pgserver's list of
    users; the next `up` adopts the server and must stop it when it stops."""
    import json
    import subprocess

    import pgserver

    pg = EmbeddedPostgres(tmp_path / "pgdata")
    pg.start()
    postmaster = _postmaster(pg.pgdata)
    dead = subprocess.Popen(["true"])
    dead.wait()
    users = pg.pgdata / ".handle_pids.json"
    users.write_text(json.dumps([dead.pid, *json.loads(users.read_text())]))
    pg.stop()  # not the last user: the server keeps running, as after `kill -9 up`
    assert postmaster.is_running()
    pgserver.PostgresServer._instances.pop(pg.pgdata.resolve(), None)  # a new process
    adopter = EmbeddedPostgres(tmp_path / "pgdata")  # the next `up`
    adopter.start()
    assert _postmaster(pg.pgdata).pid == postmaster.pid  # adopted, not a second server
    adopter.stop()
    postmaster.wait(30)  # stopped by its last live user
    assert dead.pid not in json.loads(users.read_text())


@pytest.mark.timeout(180)
def test_a_stale_pid_file_naming_another_server_is_neither_adopted_nor_stopped(tmp_path):
    """Pids wrap (``pid_max`` is 32768 here): after a ``kill -9`` the pid in ``postmaster.pid``
    can name another live process, even another PostgreSQL. pgserver would adopt it and, when
    stopping, signal it; the embedded server must start its own and leave the other alone."""
    other = EmbeddedPostgres(tmp_path / "other")
    other_url = other.start()
    mine = EmbeddedPostgres(tmp_path / "mine")
    try:
        mine.start()
        mine.stop()
        stranger = _postmaster(other.pgdata)
        lines = (other.pgdata / "postmaster.pid").read_text().splitlines()
        lines[1] = str(mine.pgdata)  # the stale file names the stranger's pid
        (mine.pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")
        url = mine.start()
        assert _postmaster(mine.pgdata).pid != stranger.pid
        assert _select_1(url) == 1
        mine.stop()
        time.sleep(1)
        assert stranger.is_running() and _select_1(other_url) == 1
    finally:
        mine.stop()
        other.stop()


def test_pgserver_imports_without_the_xdg_runtime_dir_warning():
    """Issue 28: a healthy start prints only its own lines (no platformdirs warning)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    code = "from marketflow_assets.runtime.services import import_pgserver; import_pgserver()"
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "XDG_RUNTIME_DIR" not in proc.stderr, proc.stderr[-2000:]


def test_free_ports_are_outside_the_ephemeral_range_and_bindable():
    """A port chosen for a server that starts later (a JVM) is outside the range the kernel
    hands to outgoing connections, so none of them can take it meanwhile."""
    import socket as socket_mod

    from marketflow_assets.runtime.services import _ephemeral_ports, free_port

    low, high = _ephemeral_ports()
    ports = {free_port() for _ in range(30)}
    assert all(not low <= p <= high for p in ports), sorted(ports)
    assert len(ports) > 20  # spread out, not one port again and again
    with socket_mod.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))
