"""`marketflow up` with the embedded services: killed children are restarted without losing or
duplicating a recorded poll, a crash loop stops only that child (exit 1 when `up` is stopped),
nothing is left after it stops, and a bad configuration is a one-line exit 2. (Data flowing end
to end, the UI's asset graph and a closed terminal (SIGHUP) leaving no process behind are
tested over TLS against external servers: test_secure_connectivity.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pandas as pd
import psutil
import pytest

from marketflow_assets.runtime.services import free_port
from marketflow_assets_tests.helpers import raw_key_counts

pytestmark = pytest.mark.stack

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
    [
        ("COINGECKO_API_PLAN", "enterprise"),
        ("MARKETFLOW_LOCAL_MAX_ROWS", "lots"),
        ("MARKETFLOW_KAFKA_BOOTSTRAP", "h:notaport"),
        ("MARKETFLOW_KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("MARKETFLOW_ALERT_WEBHOOK_URL", "ftp://hooks.example.com/t0k3n"),
        ("MARKETFLOW_BATCH_NICE", "20"),
    ],
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


def test_every_batch_child_and_only_they_get_the_batch_niceness(tmp_path):
    """The children ``up`` builds and the Spark Connect server it starts on demand: those of
    BATCH_CHILDREN at MARKETFLOW_BATCH_NICE, the others at the default."""
    import argparse

    from marketflow_assets.runtime import up
    from marketflow_assets.settings import load_settings

    settings = load_settings(
        {"MARKETFLOW_DATA_DIR": str(tmp_path), "MARKETFLOW_BATCH_NICE": "7", "MARKETFLOW_LIVE": "1"}
    )
    args = argparse.Namespace(
        interval=30, coins=10, spark_master="local[1]", host="127.0.0.1", port=free_port()
    )
    children = up.build_children(args, settings, "simulate")
    children.append(up.spark_connect_child(settings, args)[0])
    niceness = {child.name: child.nice for child in children}
    assert set(up.BATCH_CHILDREN) <= set(niceness)
    assert {n: v for n, v in niceness.items() if n in up.BATCH_CHILDREN} == dict.fromkeys(
        up.BATCH_CHILDREN, 7
    )
    assert {v for n, v in niceness.items() if n not in up.BATCH_CHILDREN} == {0}


def _stack_processes(up: psutil.Process, data_dir: Path) -> list[psutil.Process]:
    """`up`, everything below it (broker, JVMs, Dagster's processes) and its PostgreSQL."""
    postgres = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "postgres" and str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert postgres, "embedded PostgreSQL not found"
    return [up, *up.children(recursive=True), *postgres]


def _still_running(processes: list[psutil.Process]) -> list[str]:
    """Those still running (psutil checks the start time too: a reused pid is not a survivor)."""
    alive = []
    for p in processes:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
    return alive


def _stop(proc: subprocess.Popen) -> None:
    """Stop a `marketflow up` a failed test left running (SIGTERM: its PostgreSQL stops too)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _child(up: psutil.Process, marker: str, not_pid: int | None = None, timeout: float = 60):
    """The direct child of `up` whose command line contains ``marker`` (other than ``not_pid``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in up.children():
            with contextlib.suppress(psutil.Error):
                if marker in " ".join(child.cmdline()) and child.pid != not_pid:
                    return child
        time.sleep(0.5)
    raise AssertionError(f"no child {marker!r} of marketflow up after {timeout:.0f} s")


def _recorded(path: Path) -> list[tuple[str, pd.Timestamp]]:
    rows = []
    for line in path.read_text().splitlines():
        poll = json.loads(line)
        rows += [(coin["id"], pd.Timestamp(poll["ts"])) for coin in poll["coins"]]
    return rows


def _raw_rows(raw_dir: Path) -> Counter:
    return raw_key_counts(raw_dir)


def _wait_for(predicate, timeout: float, what: str, proc, log_path: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"up exited while waiting for {what}\n" + _tail(log_path)
        if predicate():
            return
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n" + _tail(log_path))


def _ui_serves(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:]


@pytest.mark.timeout(900)
def _spark_restarted(up: psutil.Process, old_pid: int) -> bool:
    for c in up.children():
        with contextlib.suppress(psutil.Error):
            if "kafka_streaming.py" in " ".join(c.cmdline()) and c.pid != old_pid:
                return True
    return False


def _nice_values(processes) -> set[int]:
    """The niceness of each of ``processes`` still running (a Spark worker may exit between the
    listing and the reading: that one has none to show)."""
    values = set()
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            values.add(process.nice())
    return values


def _settled_lines(path: Path) -> str:
    """The lines of a child's log saying its start-up heap was settled (``runtime/heap.py``)."""
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    return "\n".join(line for line in text.splitlines() if "start-up objects left out" in line)


def test_up_restarts_killed_children_loses_nothing_and_stops_only_a_crash_loop(tmp_path):
    """kill -9 of the Spark job and the Dagster webserver, then of ingest: `up` restarts them, the
    UI serves again and every poll recorded by `--record` (acknowledged by the broker) is in the raw
    Parquet exactly once; kill -9 of the embedded broker: `up` restarts it, ingest (not
    restarted) recreates the topic, and the polls published to the new broker reach the Parquet
    exactly once; more kills of the Spark job exceed --max-restarts 2: `up` stops that job only
    (ingest runs on) and, when stopped, exits 1 with the reason."""
    data_dir = tmp_path / "data"
    record = tmp_path / "record.jsonl"
    log_path = tmp_path / "up.log"
    argv = [MARKETFLOW, "up", "--source", "simulate", "--interval", "2", "--coins", "3"]
    port = free_port()
    argv += ["--port", str(port), "--spark-master", "local[1]", "--record", str(record)]
    argv += ["--max-restarts", "2", "--restart-window", "3600"]  # a slow machine: all count
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=_env(data_dir), stdout=log, stderr=subprocess.STDOUT)
    try:
        up = psutil.Process(proc.pid)
        _wait_for(lambda: "ready: spark" in log_path.read_text(), 400, "Parquet", proc, log_path)

        # the batch work runs niced (MARKETFLOW_BATCH_NICE, default 5), its JVM too; ingest and
        # the UI keep the default priority
        spark = _child(up, "kafka_streaming.py")
        assert _nice_values([spark, *spark.children(recursive=True)]) == {5}
        assert _child(up, "dagster-daemon").nice() == 5
        assert _child(up, " ingest ").nice() == _child(up, "dagster-webserver").nice() == 0
        # the stream processes took their start-up objects out of the garbage collector's view
        # (runtime/heap.py) once configured: ingest before its first poll, the Spark job before
        # its query, the follower before its loop
        logs = data_dir / "logs"
        # its micro-batches start as records arrive (`--trigger-seconds 0`), not on a clock
        assert "mode=as records arrive" in (logs / "spark_streaming.log").read_text()
        for name, process in (("ingest", "ingest"), ("spark_streaming", "stream")):
            assert f"{process}: " in _settled_lines(logs / f"{name}.log"), name
        _wait_for(
            lambda: "follow: " in _settled_lines(logs / "follow.log"), 120, "follow", proc, log_path
        )
        spark.kill()
        _child(up, "kafka_streaming.py", not_pid=spark.pid)
        dagster = _child(up, "dagster-webserver")
        dagster.kill()  # the UI: the code server and the daemon run on
        _child(up, "dagster-webserver", not_pid=dagster.pid)
        ingest = _child(up, " ingest ")
        ingest.kill()
        ingest = _child(up, " ingest ", not_pid=ingest.pid)
        before = len(record.read_text().splitlines())
        _wait_for(
            lambda: len(record.read_text().splitlines()) >= before + 3,
            120,
            "polls recorded by the restarted ingest",
            proc,
            log_path,
        )
        text = log_path.read_text()
        for name in ("spark", "dagster", "ingest"):
            assert f"{name} was killed by SIGKILL" in text

        expected = _recorded(record)
        assert len(expected) == len(set(expected)), "a poll was recorded twice"
        _wait_for(
            lambda: set(expected) <= set(_raw_rows(data_dir / "raw_prices")),
            400,
            f"the {len(expected)} recorded rows in the raw Parquet",
            proc,
            log_path,
        )
        rows = _raw_rows(data_dir / "raw_prices")
        assert max(rows.values()) == 1, [k for k, n in rows.items() if n > 1][:5]
        _wait_for(lambda: _ui_serves(port), 300, "the restarted Dagster UI", proc, log_path)

        # The in-memory broker dies: `up` restarts it, ingest recreates the topic and resends its
        # spool, the Spark job goes on with the recreated topic.
        _child(up, "tansu").kill()
        _wait_for(
            lambda: "kafka: embedded broker restarted" in log_path.read_text(),
            90,
            "the broker restart",
            proc,
            log_path,
        )
        after = len(record.read_text().splitlines())
        _wait_for(
            lambda: len(record.read_text().splitlines()) >= after + 3,
            120,
            "polls acknowledged by the new broker",
            proc,
            log_path,
        )
        new = [
            (coin["id"], pd.Timestamp(poll["ts"]))
            for poll in map(json.loads, record.read_text().splitlines()[after:])
            for coin in poll["coins"]
        ]
        _wait_for(
            lambda: set(new) <= set(_raw_rows(data_dir / "raw_prices")),
            400,
            "the polls published after the broker restart in the raw Parquet",
            proc,
            log_path,
        )
        rows = _raw_rows(data_dir / "raw_prices")
        assert max(rows.values()) == 1, [k for k, n in rows.items() if n > 1][:5]

        ingest = _child(up, " ingest ")
        # Kill the Spark job until `up` calls it a crash loop. An exit soon after the broker
        # restart counts as waiting for the broker (not a crash), so the number of kills needed
        # depends on timing: at most --max-restarts + 2.
        spark, kills = None, 0
        while "spark is crash-looping" not in log_path.read_text():
            assert kills < 4, (
                f"no crash loop after {kills} kills of the Spark job\n{_tail(log_path)}"
            )
            spark = _child(up, "kafka_streaming.py", not_pid=spark.pid if spark else None)
            spark.kill()
            kills += 1
            _wait_for(
                lambda pid=spark.pid: (
                    "spark is crash-looping" in log_path.read_text() or _spark_restarted(up, pid)
                ),
                120,
                "a restart or the crash loop of the Spark job",
                proc,
                log_path,
            )
        time.sleep(3)
        assert not [c for c in up.children() if "kafka_streaming.py" in " ".join(c.cmdline())]
        assert _child(up, " ingest ").pid == ingest.pid  # only the looping child is stopped
        stack = _stack_processes(up, data_dir)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 1, _tail(log_path)  # the exit code reports the crash loop
    finally:
        _stop(proc)
    text = log_path.read_text()
    assert "the other components keep running" in text
    assert "stopped while crash-looping: spark is crash-looping" in text
    time.sleep(1)
    alive = _still_running(stack)
    assert not alive, f"processes left after the stop: {alive}"
