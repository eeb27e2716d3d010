"""Memory of the whole stack as a newcomer runs it: ``marketflow up --source simulate`` at 250
coins (embedded Kafka and PostgreSQL, the streaming job, the Spark Connect server, ``dagster
dev``, the follower, the live path, the dashboard), in a temporary data directory on free ports.

Once every component said ``ready``, the stack runs for ``SETTLE`` seconds (quick: 1 minute; full:
10 minutes, the issue's "after 10 minutes"), then every process of ``up``'s tree is measured:
the resident set (RSS, what ``ps`` and ``top`` show; pages shared between processes count once
per process) and the proportional set (PSS: shared pages split between their processes, so the
processes add up to what the machine really spends). Printed: a table of the processes by PSS,
``memory_pss_mb`` / ``memory_rss_mb`` with the process count (target: <= 2,048 MB, issue 30) and
the three largest processes named.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import print_table, ratio_line

COINS = 250
SETTLE = {"quick": 60.0, "full": 600.0}
TARGET_MB = 2048
READY = ("ingest", "spark", "dagster", "indicators", "dashboard")


def _owner_jvm(proc) -> str:
    """`` (streaming)`` / `` (connect)``: which Spark driver a Python worker belongs to."""
    try:
        for parent in proc.parents():
            text = " ".join(parent.cmdline())
            if Path((parent.cmdline() or [""])[0]).name.startswith("java"):
                return " (connect)" if "SparkConnectServer" in text else " (streaming)"
    except Exception:  # noqa: BLE001 - gone meanwhile
        pass
    return ""


def describe(proc) -> str:
    """A short name for one process of the stack, from its command line."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - gone meanwhile
        return "?"
    text = " ".join(cmd)
    name = Path(cmd[0]).name if cmd else proc.name()
    if name == "java" or name.startswith("java"):
        if "SparkConnectServer" in text:
            return "JVM: Spark Connect server"
        return "JVM: streaming job (Spark driver)"
    for needle, label in (
        ("spark_streaming", "streaming job (Python driver)"),
        ("pyspark.daemon", "Spark Python worker"),
        ("pyspark.worker", "Spark Python worker"),
        ("python_streaming_source_runner", "Spark Python data source runner"),
        (" ingest", "ingest"),
        (" live", "live path"),
        (" follow", "follower"),
        ("streamlit", "dashboard"),
        (" dashboard", "dashboard launcher"),
        ("dagster-webserver", "dagster webserver"),
        ("dagster_webserver", "dagster webserver"),
        ("dagster-daemon", "dagster daemon"),
        ("daemon run", "dagster daemon"),
        ("execute_run", "dagster run worker"),
        ("execute_step", "dagster run worker"),
        ("code-server", "dagster code server"),
        ("api grpc", "dagster code server"),
        ("dagster dev", "dagster dev"),
        (" up ", "marketflow up"),
        ("tansu", "Kafka (Tansu)"),
    ):
        if needle in f" {text} ":
            return label + (_owner_jvm(proc) if label.startswith("Spark Python") else "")
    if "postgres" in name:
        return "PostgreSQL"
    return " ".join([name, *cmd[1:3]])[:60]


def measure(root_pid: int) -> list[tuple[str, int, float, float]]:
    """``(name, pid, rss MB, pss MB)`` of ``root_pid`` and every descendant."""
    import psutil

    root = psutil.Process(root_pid)
    rows = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if not info.rss:  # exiting (a zombie)
            continue
        pss = getattr(info, "pss", info.rss)
        rows.append((describe(proc), proc.pid, info.rss / 2**20, pss / 2**20))
    return sorted(rows, key=lambda r: -r[3])


def _wait_ready(up: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for component in READY:
        while f"ready: {component}" not in log_path.read_text(errors="replace"):
            if up.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"marketflow up exited ({up.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready within {timeout_s:.0f} s: {component}")
            time.sleep(1)


def run(mode: str = "quick") -> dict[str, float]:
    from marketflow_assets.runtime.services import free_port
    from marketflow_assets.settings import fresh_stack_environment

    settle = SETTLE[mode]
    marketflow = str(Path(sys.executable).with_name("marketflow"))
    print(
        f"memory: marketflow up --source simulate --coins {COINS} (every component), "
        f"measured {settle:.0f} s after the last 'ready' line",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="marketflow-memory-") as tmp:
        data_dir = Path(tmp) / "data"
        log_path = Path(tmp) / "up.log"
        command = [marketflow, "up", "--source", "simulate", "--coins", str(COINS)]
        command += ["--port", str(free_port()), "--dashboard-port", str(free_port())]
        with open(log_path, "w") as log:
            env = fresh_stack_environment(data_dir, PYSPARK_PYTHON=sys.executable)
            up = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            _wait_ready(up, log_path, 300)
            ready_s = time.monotonic() - started
            time.sleep(settle)
            rows = measure(up.pid)
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(180)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
    rss = sum(r[2] for r in rows)
    pss = sum(r[3] for r in rows)
    print_table(
        f"memory: {len(rows)} processes of `marketflow up` at {COINS} coins, "
        f"{settle:.0f} s after ready (ready after {ready_s:.0f} s)",
        ["process", "pid", "RSS MB", "PSS MB"],
        [[n, str(p), f"{r:.0f}", f"{s:.0f}"] for n, p, r, s in rows],
    )
    largest = ", ".join(f"{n} {s:.0f} MB" for n, _, _, s in rows[:3])
    ratio_line(
        "memory_pss_mb",
        pss,
        f"<= {TARGET_MB}",
        f"({len(rows)} processes; largest: {largest})",
    )
    ratio_line("memory_rss_mb", rss, None, "(shared pages counted once per process)")
    return {"memory_pss_mb": pss, "memory_rss_mb": rss}
