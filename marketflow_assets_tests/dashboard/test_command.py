"""``marketflow dashboard`` as a process: serves on 127.0.0.1, starts even when the configured
database is down (the page says so and retries), stops on SIGTERM with exit 0; a busy port is
a one-line exit 2."""

from __future__ import annotations

import socket
import subprocess
import urllib.request

from marketflow_assets.runtime.services import free_port
from marketflow_assets_tests.dashboard.processes import MARKETFLOW, Dashboard, env


def test_serves_with_the_database_down_and_stops_on_sigterm(tmp_path):
    url = f"postgresql://mf:s3cret@127.0.0.1:{free_port()}/mf"
    dashboard = Dashboard(tmp_path / "data", tmp_path / "dashboard.log", postgres_url=url)
    try:
        dashboard.wait_ready()
        with urllib.request.urlopen(f"{dashboard.url}/_stcore/health", timeout=10) as response:
            assert response.status == 200
    finally:
        assert dashboard.stop() == 0
    log = (tmp_path / "dashboard.log").read_text()
    assert "s3cret" not in log and "Traceback" not in log
    assert not (tmp_path / "data" / "postgres").exists()  # no embedded server when configured


def test_busy_port_is_a_config_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = subprocess.run(
            [MARKETFLOW, "dashboard", "--port", str(port)],
            env=env(tmp_path / "data"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "--port" in lines[0]
