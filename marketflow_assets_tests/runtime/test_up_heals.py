"""`marketflow up` heals instead of halting (issue 27): kill -9 of `up` itself leaves only its
PostgreSQL, which the next `up` adopts (never a second server beside it) and stops. The outages
of the services under a running `up` are in ``marketflow_assets_tests/test_outages.py``."""

from __future__ import annotations

import contextlib
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
from marketflow_assets_tests.stack import postgres_processes

pytestmark = pytest.mark.stack

MARKETFLOW = str(Path(sys.executable).with_name("marketflow"))


def _postgres_url(log_path: Path) -> str | None:
    found = re.search(r"embedded PostgreSQL ready .*\((postgresql://[^)]+)\)", log_path.read_text())
    return found.group(1) if found else None


def _live_rows(url: str | None) -> tuple[int, object]:
    """(rows written by the live path, their newest ts); (0, None) while unreachable."""
    import psycopg2

    if url is None:
        return 0, None
    try:
        conn = psycopg2.connect(url, connect_timeout=3)
    except psycopg2.OperationalError:
        return 0, None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), max(ts) FROM price_indicators WHERE source = 'live'")
            count, newest = cur.fetchone()
            return int(count), newest
    except psycopg2.Error:
        return 0, None
    finally:
        conn.close()


def _wait_for(predicate, timeout: float, what: str, proc, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"up exited while waiting for {what}\n{_tail(log_path)}"
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{_tail(log_path)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:]


def _child(up: psutil.Process, marker: str) -> psutil.Process:
    for child in up.children():
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(child.cmdline()):
                return child
    raise AssertionError(f"no child {marker!r} of marketflow up")


def _runs(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


def _start_up(data_dir: Path, log_path: Path) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETFLOW_", "COINGECKO_", "DAGSTER_"))
    }
    env.update(MARKETFLOW_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    argv = [MARKETFLOW, "up", "--source", "simulate", "--interval", "2", "--coins", "3"]
    argv += ["--port", str(free_port()), "--dashboard-port", str(free_port())]
    argv += ["--spark-master", "local[1]"]
    with open(log_path, "w") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.timeout(300)
def test_kill_9_of_up_leaves_only_postgres_which_the_next_up_adopts_and_stops():
    """Everything `up` started dies with it but its PostgreSQL (a daemon); the next `up` adopts
    that server (never a second one beside it) and stops it when it stops."""
    with tempfile.TemporaryDirectory(prefix="marketflow-up-kill9-") as root:
        root = Path(root)
        data_dir = root / "data"
        first_log, second_log = root / "up1.log", root / "up2.log"
        proc = _start_up(data_dir, first_log)
        second = None
        try:
            _wait_for(
                lambda: _live_rows(_postgres_url(first_log))[0] > 0,
                150,
                "rows from the live path",
                proc,
                first_log,
            )
            descendants = psutil.Process(proc.pid).children(recursive=True)
            pid_file = data_dir / "postgres" / "postmaster.pid"
            postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
            proc.kill()
            proc.wait(10)
            deadline = time.monotonic() + 60
            left = descendants
            while left and time.monotonic() < deadline:
                time.sleep(1)
                left = [p for p in left if _runs(p)]
            assert not left, [" ".join(p.cmdline())[:100] for p in left]
            assert postmaster.is_running()  # the daemon stays, to be adopted

            second = _start_up(data_dir, second_log)
            _wait_for(
                lambda: "ready: indicators" in second_log.read_text(),
                150,
                "the second up",
                second,
                second_log,
            )
            servers = [p.pid for p in postgres_processes(data_dir)]
            assert servers == [postmaster.pid], servers  # adopted, not a second server
            second.send_signal(signal.SIGTERM)
            assert second.wait(120) == 0, _tail(second_log)
            postmaster.wait(30)  # the adopted server stopped with the up that adopted it
        finally:
            for p in (proc, second):
                if p is not None and p.poll() is None:
                    p.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(120)
                    if p.poll() is None:
                        p.kill()
            time.sleep(1)
            left = postgres_processes(data_dir)
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        assert not left, f"PostgreSQL processes left: {left}"
