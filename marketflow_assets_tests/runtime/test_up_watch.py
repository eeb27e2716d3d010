"""`up`'s watch of an embedded PostgreSQL, on real processes: kill -9 of the server is alerted,
the server is started again on the same URL, a child that needs it and exited meanwhile waits for
it instead of being counted as crashing (even with --max-restarts 0), and ingest runs on."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

import psutil
import pytest

from marketflow_assets.runtime import up
from marketflow_assets.runtime.services import EmbeddedPostgres
from marketflow_assets.runtime.supervisor import Child, RestartPolicy, Supervisor
from marketflow_assets.settings import load_settings

PY = sys.executable


@pytest.mark.timeout(180)
def test_a_killed_embedded_postgres_is_restarted_and_its_users_wait(tmp_path, caplog):
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    url = pg.start()
    settings = dataclasses.replace(load_settings({}), postgres_url=url, kafka_bootstrap=None)
    alerts = []
    deps = up.dependencies(settings, alert=lambda *a: alerts.append(a))
    deps.every_s = 0.5
    # like `live` before issue 27: exits at the first failed query
    reader = (
        "import sys, time, psycopg2\n"
        "conn = psycopg2.connect(sys.argv[1])\n"
        "while True:\n"
        "    with conn.cursor() as cur: cur.execute('SELECT 1')\n"
        "    time.sleep(0.1)\n"
    )
    reader = Child("reader", [PY, "-c", reader, url], tmp_path / "r.log", needs=("postgres",))
    ingest = Child("ingest", [PY, "-c", "import time; time.sleep(300)"], tmp_path / "i.log")
    ingest.essential = True
    policy = RestartPolicy(max_restarts=0, window_s=60, backoff_s=0.2, max_backoff_s=1.0)
    supervisor = Supervisor([], dict(os.environ), policy, dependencies=deps)
    watches = up.embedded_watches(supervisor, settings, None, pg)
    caplog.set_level(logging.INFO, logger="marketflow.up")
    supervisor.start(ingest)
    supervisor.start(reader)
    try:
        time.sleep(1.0)
        first, ingest_pid = reader.proc.pid, ingest.proc.pid
        psutil.Process(int((pg.pgdata / "postmaster.pid").read_text().split()[0])).kill()
        deadline = time.monotonic() + 120
        while not (deps.is_up("postgres") and reader.proc is not None and reader.proc.pid != first):
            assert time.monotonic() < deadline, caplog.text[-3000:]
            for watch in watches:
                watch.check()
            supervisor.poll()
            time.sleep(0.1)
        time.sleep(1.0)
        supervisor.poll()
        assert pg.url == url and pg.alive()
        assert reader.proc.poll() is None and not supervisor.given_up
        assert ingest.proc.pid == ingest_pid
        assert [(key, state) for key, _, state, _ in alerts] == [
            ("dependency:postgres", "down"),
            ("dependency:postgres", "up"),
        ]
        assert "postgres: embedded PostgreSQL restarted" in caplog.text
    finally:
        supervisor.stop_all()
        pg.stop()
