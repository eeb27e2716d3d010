"""``python -m marketflow_assets.runtime.spark_standalone``: a local cluster for users, until
SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engines, pytest.mark.spark_cluster, pytest.mark.timeout(300)]

COMMAND = [sys.executable, "-m", "marketflow_assets.runtime.spark_standalone"]


def processes_mentioning(text: str) -> list[str]:
    hits = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in argv:
                hits.append(f"{entry.name}: {argv[:200]}")
    return hits


def test_command_runs_a_loopback_cluster_until_sigterm(tmp_path):
    work = tmp_path / "cluster"
    proc = subprocess.Popen(
        [*COMMAND, "--cores", "1", "--memory", "512m", "--work-dir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # printed once the worker is registered
        assert first.startswith("MARKETFLOW_SPARK_MASTER=spark://127.0.0.1:"), (
            first + proc.stderr.read() if proc.poll() is not None else first
        )
        port = int(first.strip().rsplit(":", 1)[1])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert "Successfully registered with master" in (work / "worker.log").read_text()
        assert processes_mentioning(str(work))  # master and worker JVMs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    deadline = time.monotonic() + 10
    while processes_mentioning(str(work)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(work)) == []


def test_bad_cores_is_exit_2(tmp_path):
    res = subprocess.run(
        [*COMMAND, "--cores", "0", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "--cores must be at least 1" in res.stderr.strip().splitlines()[-1]
