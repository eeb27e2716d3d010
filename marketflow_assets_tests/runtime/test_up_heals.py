"""`marketflow up` heals instead of halting (issue 27): kill -9 of the embedded PostgreSQL is
alerted, `up` starts it again on the same data directory and URL, the live path waits and
resumes by itself, ingest is never interrupted, and nothing is counted as a crash loop; when `up`
stops, the restarted PostgreSQL stops with it. kill -9 of `up` itself leaves only its PostgreSQL,
which the next `up` adopts and stops."""

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


def _postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """The running (not zombie) PostgreSQL processes of ``data_dir``."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.info["name"] == "postgres" and str(data_dir) in " ".join(p.info["cmdline"] or []):
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
    return found


@pytest.mark.timeout(300)
def test_up_restarts_a_killed_embedded_postgres_and_the_live_path_recovers():
    with tempfile.TemporaryDirectory(prefix="marketflow-up-heals-") as root:
        root = Path(root)
        data_dir, log_path, record = root / "data", root / "up.log", root / "record.jsonl"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MARKETFLOW_", "COINGECKO_", "DAGSTER_"))
        }
        env.update(MARKETFLOW_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
        argv = [MARKETFLOW, "up", "--source", "simulate", "--interval", "2", "--coins", "3"]
        argv += ["--port", str(free_port()), "--dashboard-port", str(free_port())]
        argv += ["--spark-master", "local[1]", "--record", str(record)]
        argv += ["--max-restarts", "2", "--restart-window", "3600"]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            up = psutil.Process(proc.pid)
            _wait_for(
                lambda: _live_rows(_postgres_url(log_path))[0] > 0,
                150,
                "rows from the live path",
                proc,
                log_path,
            )
            url = _postgres_url(log_path)
            ingest = _child(up, " ingest ")
            _, newest_before = _live_rows(url)
            polls_before = len(record.read_text().splitlines())

            pgdata = data_dir / "postgres"
            postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
            postmaster.kill()
            _wait_for(
                lambda: "postgres: embedded PostgreSQL restarted" in log_path.read_text(),
                90,
                "the restart of the embedded PostgreSQL",
                proc,
                log_path,
            )
            _wait_for(
                lambda: (lambda n: n[1] is not None and n[1] > newest_before)(_live_rows(url)),
                90,
                "new rows from the live path after the restart",
                proc,
                log_path,
            )
            # ingest ran throughout: the same process goes on recording polls
            _wait_for(
                lambda: len(record.read_text().splitlines()) >= polls_before + 3,
                60,
                "polls recorded after the outage",
                proc,
                log_path,
            )
            assert _child(up, " ingest ").pid == ingest.pid
            # the live path waited in place and resumed; `up` did not have to restart it
            live_log = (data_dir / "logs" / "live.log").read_text()
            assert "live: PostgreSQL is back after" in live_log, live_log[-3000:]
            text = log_path.read_text()
            assert text.count("ALERT FAILURE: Marketflow dependency postgres is unavailable") == 1
            back = re.findall(r"ALERT RESOLVED: Marketflow dependency postgres is back after", text)
            assert len(back) == 1, _tail(log_path)
            assert "crash-looping" not in text, _tail(log_path)
            for name in ("ingest", "live"):
                assert f"{name} was killed" not in text and f"{name} exited" not in text

            assert _postgres_processes(data_dir), "the restarted PostgreSQL is not running"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(120) == 0, _tail(log_path)
        finally:
            if proc.poll() is None:  # a failed test: stop `up`, then what it left of PostgreSQL
                proc.terminate()
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
            time.sleep(1)
            alive = _postgres_processes(data_dir)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        assert not alive, f"PostgreSQL processes left after up stopped: {alive}"


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
            servers = [p.pid for p in _postgres_processes(data_dir)]
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
            left = _postgres_processes(data_dir)
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        assert not left, f"PostgreSQL processes left: {left}"
