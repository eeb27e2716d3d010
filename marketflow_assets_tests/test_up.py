"""`marketflow up` end to end: data flows into PostgreSQL, the UI serves the asset graph, Ctrl-C
leaves no process behind, and a bad configuration is a one-line exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from marketflow_assets.services import free_port

MARKETFLOW = str(Path(sys.executable).with_name("marketflow"))


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETFLOW_", "COINGECKO_", "DAGSTER_"))
    }
    env.update({"MARKETFLOW_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **extra})
    return env


def test_unreachable_postgres_exits_2_with_one_line(tmp_path):
    url = f"postgresql://mf:hunter2@127.0.0.1:{free_port()}/mf"
    proc = subprocess.run(
        [MARKETFLOW, "up", "--source", "simulate"],
        env=_env(tmp_path, MARKETFLOW_POSTGRES_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("marketflow up: MARKETFLOW_POSTGRES_URL unreachable")
    assert "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("COINGECKO_API_PLAN", "enterprise"), ("MARKETFLOW_LOCAL_MAX_ROWS", "lots")],
)
def test_bad_config_is_config_error(tmp_path, name, value):
    proc = subprocess.run(
        [MARKETFLOW, "up"],
        env=_env(tmp_path, **{name: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in proc.stderr


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _indicator_rows(log_path: Path) -> int:
    """Rows in price_indicators of the embedded Postgres whose URL `up` logged."""
    import psycopg2

    found = re.search(r"embedded PostgreSQL ready .*\((postgresql://[^)]+)\)", log_path.read_text())
    if not found:
        return 0
    conn = psycopg2.connect(found.group(1))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM price_indicators")
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.timeout(420)
def test_up_flows_end_to_end_and_stops_cleanly(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    dashboard_port = free_port()
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                MARKETFLOW,
                "up",
                "--source",
                "simulate",
                "--interval",
                "5",
                "--coins",
                "12",
                "--port",
                str(port),
                "--dashboard-port",
                str(dashboard_port),
                "--spark-master",
                "local[1]",
            ],
            env=_env(data_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    started = time.monotonic()
    try:
        rows = 0
        while time.monotonic() - started < 240:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                rows = _indicator_rows(log_path)
            except Exception:  # noqa: BLE001 - not up yet
                rows = 0
            if rows:
                break
            time.sleep(3)
        assert rows > 0, "no rows in price_indicators after 240 s\n" + log_path.read_text()[-3000:]
        elapsed = time.monotonic() - started
        print(f"price_indicators had {rows} rows {elapsed:.0f} s after start")

        nodes = _graphql(port, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert {"raw_prices", "price_indicators", "market_movers"} <= keys

        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        postgres_pids = [
            p.pid
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "postgres" and str(data_dir) in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres_pids, "embedded PostgreSQL not found"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1)
    alive = [
        pid
        for pid in family + postgres_pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert not alive, f"processes left after SIGINT: {alive}"
    text = log_path.read_text()
    for component in ("ingest", "spark", "dagster"):
        assert f"ready: {component}" in text
    assert f"ready: dashboard — http://127.0.0.1:{dashboard_port}" in text
